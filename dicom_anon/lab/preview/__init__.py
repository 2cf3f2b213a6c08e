"""Training the preview head a draw's checks read (dicom_anon.faces.preview)."""
