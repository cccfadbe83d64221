"""Django system checks for keyrotation (registered in ``KeyRotationConfig.ready``)."""
