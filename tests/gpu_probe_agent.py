"""A stand-in agent for GPU-packing tests: it takes any agent flags, notes the GPU it was given (CUDA_VISIBLE_DEVICES)
and when it ran in its run folder's summary.json, and finishes after a second."""

import json
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    argv = sys.argv[1:]
    run_dir = Path(argv[argv.index("--results-dir") + 1]) / argv[argv.index("--run-name") + 1]
    start = time.time()
    time.sleep(1.0)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps({"status": "finished", "final_return": 0.0, "start": start,
                                                      "end": time.time(),
                                                      "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", "")}))
