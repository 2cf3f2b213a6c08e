"""dicom-anon: de-identify clinical photographs and forward them to a teaching archive."""

__version__ = "0.1.0"
