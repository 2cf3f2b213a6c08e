#!/usr/bin/env bash
# The README's demo: the whole path on loopback with real DICOM peers.
#   dcmtk storescp (the teaching archive)  <-  dicom-anon serve  <-  dcmtk storescu (the clinic PACS)
# The example photos are sent, de-identified per config/dicom-anon.yaml, and land in out/archive/.
# Everything started here is stopped on exit. Run through ./dev.sh demo (which sets up .venv first).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

dcmtk() {  # dcmtk's tool: an activated venv puts pynetdicom's same-named script first on PATH
    local tool
    for tool in $(type -ap "$1"); do
        # grep reads to the end: with -q it may exit first, and pipefail then fails the pipe (SIGPIPE)
        if "$tool" --version 2>/dev/null | grep '^\$dcmtk:' >/dev/null; then echo "$tool"; return 0; fi
    done
    echo "demo: dcmtk's $1 is not installed (apt-get install -y dcmtk)" >&2
    return 1
}
STORESCP=$(dcmtk storescp)
STORESCU=$(dcmtk storescu)

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {  # wait until something listens on 127.0.0.1:$1 (bounded)
    for _ in $(seq 100); do
        "$PYTHON" -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 0.2).close()" 2>/dev/null && return 0
        sleep 0.2
    done
    echo "demo: nothing is listening on port $1" >&2
    return 1
}

ARCHIVE_PORT=$(free_port)
SERVICE_PORT=$(free_port)
rm -rf out .demo-data
mkdir -p out/archive
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT

"$STORESCP" -aet TEACHING +xa -od out/archive -fe .dcm "$ARCHIVE_PORT" &
pids+=($!)
dicom-anon serve --config config/dicom-anon.yaml --listen "127.0.0.1:$SERVICE_PORT" --data-dir .demo-data \
    --destination "teaching=TEACHING@127.0.0.1:$ARCHIVE_PORT" > out/service.log 2>&1 &
pids+=($!)
wait_port "$ARCHIVE_PORT"
wait_port "$SERVICE_PORT"

sent=(examples/*.dcm)
echo "demo: the clinic PACS (storescu) sends ${#sent[@]} example photos to dicom-anon on port $SERVICE_PORT"
TCP_NODELAY=1 "$STORESCU" -aet CLINIC -aec DICOM_ANON -xy 127.0.0.1 "$SERVICE_PORT" "${sent[@]}"

# Wait until every instance is either in the archive or in quarantine (bounded: 3 minutes).
for _ in $(seq 360); do
    arrived=$(find out/archive -name '*.dcm' | wc -l)
    quarantined=$(find .demo-data/quarantine -name '*.dcm' 2>/dev/null | wc -l)
    [ $((arrived + quarantined)) -ge ${#sent[@]} ] && break
    sleep 0.5
done

echo
echo "demo: what landed in the teaching archive (out/archive/):"
"$PYTHON" - <<'PY'
from pathlib import Path

import pydicom

for path in sorted(Path("out/archive").glob("*.dcm")):
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    codes = [item.CodeMeaning for item in ds.get("DeidentificationMethodCodeSequence", [])]
    print(
        f"  {path.name[:30]:30}  patient {ds.PatientID}  "
        f"identity removed: {ds.get('PatientIdentityRemoved', '?')}  "
        f"face replaced: {'yes' if ds.get('RecognizableVisualFeatures') == 'NO' else 'no'}  "
        f"({'; '.join(codes)})"
    )
PY
"$PYTHON" - <<'PY'
# A before/after sheet: each example beside what the archive received, or why it was held, with the
# view it was recognised as (dicom_anon/views.py) and what its route did.
# Outputs are found through the keyed UID map (new UID = HMAC of the original under .demo-data's key).
import json
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw

from dicom_anon.headers.pseudonyms import SiteKey
from dicom_anon.views import recognise

key = SiteKey.load_or_create(Path(".demo-data/site.key"))
received = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in Path("out/archive").glob("*.dcm")}
held = {}
for folder in Path(".demo-data/quarantine").glob("*"):
    if (folder / "instance.dcm").exists() and (folder / "reason.json").exists():
        uid = pydicom.dcmread(folder / "instance.dcm", stop_before_pixels=True).SOPInstanceUID
        held[uid] = json.loads((folder / "reason.json").read_text())["code"]
size, band = 256, 18
rows = sorted(Path("examples").glob("*.dcm"))
sheet = Image.new("RGB", (2 * size, len(rows) * (size + band)), "white")
draw = ImageDraw.Draw(sheet)
for i, src in enumerate(rows):
    top = i * (size + band)
    original = pydicom.dcmread(src)
    sheet.paste(Image.fromarray(original.pixel_array).convert("RGB").resize((size, size)), (0, top))
    out = received.get(key.uid(original.SOPInstanceUID))
    if out is not None:
        arrived = pydicom.dcmread(out)
        sheet.paste(Image.fromarray(arrived.pixel_array).convert("RGB").resize((size, size)), (size, top))
        if np.array_equal(arrived.pixel_array, original.pixel_array):
            what = "forwarded, pixels unchanged"
        else:
            what = "forwarded, face replaced"
    else:
        draw.rectangle((size, top, 2 * size - 1, top + size - 1), fill=(96, 20, 20))
        what = f"held: {held.get(original.SOPInstanceUID, 'in quarantine')}"
        draw.text((size + 10, top + size // 2), what, fill="white")
    draw.text((4, top + 4), src.name, fill="yellow")
    draw.text((4, top + size + 3), f"{recognise(original).name or 'view not recognised'}: {what}", fill="black")
sheet.save("out/before_after.png")
print("demo: before/after sheet (example | what the archive received): out/before_after.png")
PY
echo "demo: the review sheet a records officer looks at before teaching use (de-identified files only):"
dicom-anon review out/archive -o out/review.png --trail .demo-data/audit/audit.jsonl
echo
echo "demo: quarantine (not forwarded, with the reason):"
dicom-anon quarantine list --config config/dicom-anon.yaml --data-dir .demo-data || true
echo
echo "demo: the audit trail (.demo-data/audit/), checked for tampering:"
dicom-anon audit verify --config config/dicom-anon.yaml --data-dir .demo-data
echo "demo: service log in out/service.log; query the trail with:"
echo "      .venv/bin/dicom-anon audit query --config config/dicom-anon.yaml --data-dir .demo-data"
