from django.apps import AppConfig, apps


class KeyRotationConfig(AppConfig):
    """Wires checks, signals and the optional integrations (the admin, Django REST framework); does
    no I/O (no key is loaded until a value is read or written)."""

    name = "keyrotation"
    verbose_name = "Key rotation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import pre_migrate

        from . import checks  # noqa: F401  (registers the system checks)
        from .migration_guard import refuse_unsafe_migrations

        pre_migrate.connect(refuse_unsafe_migrations, sender=self, dispatch_uid="keyrotation.migration_guard")

        if apps.is_installed("django.contrib.admin"):
            from . import admin_integration

            admin_integration.install()
        try:
            import rest_framework  # noqa: F401
        except ImportError:
            return  # Django REST framework is an optional extra
        from .contrib import rest_framework as drf

        drf.install()
