"""dicom-anon: de-identify clinical photographs and forward them to a teaching archive."""

from pathlib import Path

__version__ = "0.1.0"
# Where an installed service keeps its settings. Here, not in config.py, so that a command's help
# can name it without importing the settings schema (pydantic, pydicom's dictionary).
DEFAULT_CONFIG = Path("/etc/dicom-anon/dicom-anon.yaml")
