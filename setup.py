"""Install paddle_dtnh.

Paddle itself is an extra, so a GPU user is never forced onto the CPU build:
  CPU:  pip install -c constraints.txt -e ".[cpu,hub,dev]"
  Paddle 2.6: pip install -c constraints-paddle26.txt "paddlepaddle==2.6.2" -e ".[hub,dev]"
  GPU:  install paddlepaddle-gpu for your CUDA first (see README), then
        pip install -c constraints.txt -e ".[hub,dev]"
"""

import re

from setuptools import find_packages, setup


def _version() -> str:
    """The version from paddle_dtnh/_version.py (read, not imported: no Paddle needed)."""
    with open("paddle_dtnh/_version.py", encoding="utf-8") as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


setup(
    name="paddle_dtnh",
    version=_version(),
    description="DTNH: regularized deep transfer learning that never hurts, for PaddlePaddle",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["paddle_dtnh", "paddle_dtnh.*"]),
    # the PaddleHub module directory is data, loaded by hub.Module(directory=)
    package_data={"paddle_dtnh.integrations.hub": ["resnet18_vd_dtnh/*.py"]},
    python_requires=">=3.9",
    entry_points={"console_scripts": ["paddle-dtnh = paddle_dtnh.cli:main"]},
    install_requires=["numpy"],
    extras_require={
        # 2.6 is the oldest release the suite passes on (make test-paddle26);
        # what needs 3.x raises PaddleVersionError, see the README
        "cpu": ["paddlepaddle>=2.6"],
        "hub": ["paddlehub==2.4.0", "visualdl>=2.5"],
        "demo": ["scikit-learn", "mlxtend", "matplotlib", "tqdm"],
        "dev": ["pytest", "hypothesis", "scikit-learn", "scipy", "mlxtend", "matplotlib", "tqdm", "build"],
    },
)
