# musicfs developer targets. `make install` then `make test`; `make demo` for a quick look.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR := .demo
DEMO_MNT := demo-mnt
DEMO_LIBRARY := $(DEMO_DIR)/music

.PHONY: install system-packages test test-fast bench bench-remote demo demo-stop lint clean

install: system-packages $(BIN)/musicfs

# fuse provides fusermount and libfuse2 the library fusepy loads; only root can install them.
# ffmpeg and sshd are for the tests (real audio files, an sftp origin); skipped without them.
system-packages:
	@if [ "$$(id -u)" = 0 ] && ! { command -v fusermount >/dev/null && ldconfig -p | grep -q 'libfuse.so.2' \
			&& command -v ffmpeg >/dev/null && [ -x /usr/sbin/sshd ]; }; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse libfuse2 ffmpeg openssh-server; \
	elif ! command -v fusermount >/dev/null; then \
		echo "musicfs needs fusermount and libfuse2: sudo apt-get install fuse libfuse2"; exit 1; \
	fi

$(BIN)/musicfs: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m 'not slow'

bench: install
	$(BIN)/python -m bench

bench-remote: install
	$(BIN)/python -m bench.remote

demo: install $(DEMO_LIBRARY)
	@mkdir -p $(DEMO_MNT)
	@if mountpoint -q $(DEMO_MNT); then $(BIN)/musicfs unmount $(DEMO_MNT); fi
	$(BIN)/musicfs $(DEMO_MNT) -O $(DEMO_LIBRARY) --cache-dir $(DEMO_DIR)/cache --cache-size 200M
	@echo "mounted; try: ls -R $(DEMO_MNT); mpv $(DEMO_MNT)/*/*/*   (stop with: make demo-stop)"
	@ls $(DEMO_MNT)

# Real, tagged, playable audio made by ffmpeg; made again when the script changes. The old
# demo's cache (and its undecodable .demo/library) go with it.
$(DEMO_LIBRARY): bin/make-demo-library
	@if mountpoint -q $(DEMO_MNT); then $(BIN)/musicfs unmount $(DEMO_MNT); fi
	rm -rf $(DEMO_DIR)/cache $(DEMO_DIR)/library
	$(PYTHON) bin/make-demo-library $@
	@touch $@

demo-stop:
	@if mountpoint -q $(DEMO_MNT); then $(BIN)/musicfs unmount $(DEMO_MNT) && echo "unmounted $(DEMO_MNT)"; \
	else echo "$(DEMO_MNT) is not mounted"; fi

lint: install
	$(BIN)/pip install -q pyflakes
	$(BIN)/python -m pyflakes musicfs tests bench testkit

clean:
	rm -rf $(VENV) build *.egg-info $(DEMO_DIR)
