#!/usr/bin/env bash
# Regenerate the example DICOM photos used by `./dev.sh demo` (see README.md here).
# Two fake patients: A (a face, an intraoral photo and a right profile), B (a face). Each run of
# make_photo_dicom.py writes one Explicit VR Little Endian and one JPEG Baseline file
# plus a manifest of the fake PHI planted in them. --no-burn-in keeps the pixels free
# of text (Burned In Annotation NO), so a headers-only profile accepts them.
# Sizes stay at 384 px so the repository stays small (about 1.3 MB in all).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
shared="${SHARED:-$root/../shared}"
python="${PYTHON:-$root/.venv/bin/python}"
tool="$shared/tools/make_photo_dicom.py"
faces="$shared/testdata/faces/sfhq"
intraoral="$shared/testdata/dicom/dicom4ortho/sample_NikonD90.JPG"
profile_dcm="$shared/testdata/dicom/dicom4ortho/test.dcm"   # dicom4ortho's right-profile drawing (MIT)

make() {
    "$python" "$tool" --no-burn-in --max-size 384 --quality 90 --outdir "$here" "$@"
}

make --prefix patient_a_face --seed 101 --input "$faces/SFHQ_sample_4x8_028.jpg" \
     --patient-name "Lindqvist^Maria^Elena^^" --patient-id "EX-20417"
make --prefix patient_a_intraoral --seed 102 --input "$intraoral" \
     --patient-name "Lindqvist^Maria^Elena^^" --patient-id "EX-20417"
make --prefix patient_b_face --seed 201 --input "$faces/SFHQ_sample_4x8_033.jpg" \
     --patient-name "Okonkwo-Brandt^Ada^^^" --patient-id "EX-31958"
profile_png="$(mktemp --suffix=.png)"
trap 'rm -f "$profile_png"' EXIT
"$python" -c "import sys, pydicom; from PIL import Image; Image.fromarray(pydicom.dcmread(sys.argv[1]).pixel_array).save(sys.argv[2])" \
    "$profile_dcm" "$profile_png"
make --prefix patient_a_profile --seed 103 --input "$profile_png" \
     --patient-name "Lindqvist^Maria^Elena^^" --patient-id "EX-20417"
# The views, coded (explicit LE files) or named in the series description only (JPEG files).
"$python" "$here/code_views.py" "$here"
