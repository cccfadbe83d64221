from django.apps import AppConfig


class KeyRotationConfig(AppConfig):
    """Wires checks and signals; does no I/O (no key is loaded until a value is read or written)."""

    name = "keyrotation"
    verbose_name = "Key rotation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
