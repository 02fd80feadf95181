"""The step-cost benchmark runs and writes the documented JSON (tiny settings)."""

import json
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "step_cost.py"


def test_step_cost_json_schema(tmp_path):
    out = tmp_path / "cost.json"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--methods", "finetune", "dtnh_knowdist", "--steps", "1",
         "--warmup", "0", "--batch-size", "2", "--attention-batch", "0", "--json", str(out)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    result = json.loads(out.read_text())
    assert set(result["methods"]) == {"finetune", "dtnh_knowdist"}
    for entry in result["methods"].values():
        assert entry["step_ms"] > 0 and entry["peak_mem_mb"] > 0
    assert result["config"]["batch_size"] == 2
