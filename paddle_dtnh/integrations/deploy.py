"""The last step of a fine-tuning recipe: a Paddle Inference model.

:func:`save_inference_model` traces a trained network with
``paddle.jit.to_static`` (in eval mode: BatchNorm uses its running
statistics) and writes it with ``paddle.jit.save``; :func:`load_predictor`
opens it with ``paddle.inference.create_predictor`` and :func:`predict` runs
it on a NumPy batch. PaddleHub modules export the same way through their own
``module.save_inference_model(dirname)`` (the library's module carries an
``input_spec``).
"""

from __future__ import annotations

import glob
import os

import numpy as np
import paddle

from .._layers import IMAGE_SPEC, evaluating

__all__ = ["IMAGE_SPEC", "save_inference_model", "load_predictor", "predict"]

#: float32 NCHW images of any batch size and size, 3 channels


def save_inference_model(model: paddle.nn.Layer, path_prefix: str, *, input_spec=IMAGE_SPEC) -> dict:
    """Write ``model`` as a Paddle Inference model at ``path_prefix``.

    Args:
        model (paddle.nn.Layer): the trained network (left in the mode it was in).
        path_prefix (str): files are ``<path_prefix>.json`` (or ``.pdmodel``)
            and ``<path_prefix>.pdiparams``.
        input_spec (sequence, optional): the inputs. Default: :data:`IMAGE_SPEC`.

    Returns:
        dict: ``{"model": path, "params": path}``.

    Examples:
        .. code-block:: python

            >>> import os, tempfile
            >>> import numpy as np
            >>> import paddle
            >>> from paddle_dtnh.integrations.deploy import load_predictor, predict, save_inference_model
            >>> net = paddle.nn.Sequential(paddle.nn.Conv2D(3, 2, 3), paddle.nn.AdaptiveAvgPool2D(1),
            ...                            paddle.nn.Flatten())
            >>> prefix = os.path.join(tempfile.mkdtemp(), "net")
            >>> written = save_inference_model(net, prefix)
            >>> x = np.ones([1, 3, 8, 8], "float32")
            >>> bool(np.allclose(predict(load_predictor(prefix), x)[0], net(paddle.to_tensor(x)).numpy(), atol=1e-5))
            True
    """
    with evaluating(model):
        paddle.jit.save(paddle.jit.to_static(model, input_spec=list(input_spec), full_graph=True), path_prefix)
    return {"model": _model_file(path_prefix), "params": path_prefix + ".pdiparams"}


def _model_file(path_prefix: str) -> str:
    for suffix in (".json", ".pdmodel"):  # PIR programs are .json, the legacy ones .pdmodel
        if os.path.isfile(path_prefix + suffix):
            return path_prefix + suffix
    found = glob.glob(path_prefix + ".*")
    raise FileNotFoundError(f"No Paddle Inference model at {path_prefix} (found {found or 'nothing'}): "
                            "write one with save_inference_model(model, path_prefix).")


def load_predictor(path_prefix: str, *, use_gpu: bool = False, gpu_memory_mb: int = 256):
    """A ``paddle.inference`` predictor for the model at ``path_prefix``."""
    from paddle import inference

    config = inference.Config(_model_file(path_prefix), path_prefix + ".pdiparams")
    if use_gpu:
        config.enable_use_gpu(gpu_memory_mb, 0)
    else:
        config.disable_gpu()
    config.disable_glog_info()
    return inference.create_predictor(config)


def predict(predictor, *inputs: np.ndarray) -> list:
    """Run ``predictor`` on NumPy inputs (in the order of its input names);
    returns every output as a NumPy array."""
    names = predictor.get_input_names()
    if len(inputs) != len(names):
        raise ValueError(f"The model takes {len(names)} input(s) ({names}), got {len(inputs)}.")
    for name, value in zip(names, inputs):
        handle = predictor.get_input_handle(name)
        value = np.ascontiguousarray(value)
        handle.reshape(list(value.shape))
        handle.copy_from_cpu(value)
    predictor.run()
    return [predictor.get_output_handle(n).copy_to_cpu() for n in predictor.get_output_names()]
