"""A stand-in sweep trial for tests/test_sweep.py (no ser, no torch: starts in milliseconds).

    python fake_trial.py key=value ... output_dir=DIR

Waits while <DIR>/../hold exists (so a test can interrupt it mid-run), then writes DIR/results.json in
`ser train`'s format: test/ua = x / 10, the environment's CUDA_VISIBLE_DEVICES and OMP_NUM_THREADS, and the arguments.
Exits 3 when given crash=True.
"""

import json
import os
import sys
import time
from pathlib import Path

args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
out = Path(args["output_dir"])
deadline = time.time() + 300
while (out.parent / "hold").exists() and time.time() < deadline:
    time.sleep(0.05)
if args.get("crash") == "True":
    print("Traceback (most recent call last):\n  File 'fake_trial.py'\nRuntimeError: deliberate crash", file=sys.stderr)
    sys.exit(3)
out.mkdir(parents=True, exist_ok=True)
results = {"test/ua": float(args.get("x", 0)) / 10, "best_val": 0.5, "monitor": "val/ua", "n_test": 10,
           "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "argv": sys.argv[1:]}
(out / "results.json").write_text(json.dumps(results))
