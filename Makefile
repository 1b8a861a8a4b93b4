# Two commands do all the set-up on a fresh machine: `make run` (the main job) and `make test`.
# Both create the virtual environment in .venv when it is missing.

VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: run test cross-tools bench bench-search bench-deployments calibrate clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

run: $(VENV)/.installed  ## the main job: PPO search on the calibrated Cortex-A72 model
	$(PY) experiments/run_ppo.py --target cortex-a72 $(ARGS)

cross-tools:  ## the aarch64 cross compiler and qemu (build and check cortex-a72 artifacts), installed with apt when missing
	@{ command -v aarch64-linux-gnu-g++ && command -v qemu-aarch64-static; } >/dev/null || { command -v apt-get >/dev/null \
		&& [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user-static; } \
		|| echo "note: install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user-static to build and check for cortex-a72"

test: $(VENV)/.installed cross-tools  ## the test suite (what CI runs): whole test modules spread over 2 workers
	$(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder

bench: $(VENV)/.installed  ## benchmark JSON + PNG into benchmarks/out/
	$(PY) benchmarks/main_job.py
	$(PY) benchmarks/npu_dataflows.py

bench-search: $(VENV)/.installed  ## every agent against the exact references, 3 seeds (hours; resumable)
	$(PY) benchmarks/search_quality.py

bench-deployments: $(VENV)/.installed  ## the searched artifact vs TVM default, PyTorch, ONNX Runtime; the whole-network correction (~1.5 h)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/deployments.py

calibrate: $(VENV)/.installed  ## refit the A72 model to the public figures (writes deploy/data/cortex_a72.json)
	$(PY) experiments/calibrate_cpu_model.py

clean-venv:
	rm -rf $(VENV)
