"""``manage.py encryptcolumn``: write the migration that adopts an existing column, and say what to
put in ``models.py`` (see docs/adoption.md)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from ... import adoption_plan, adoption_sources, reporting

# Options of the starting migration only: (flag, option key).
FINISH_REFUSES = (
    ("--from", "source"),
    ("--blind-index", "blind_index"),
    ("--legacy-name", "legacy_name"),
    ("--column", "column"),
)


class Command(BaseCommand):
    help = (
        "Write the migration that starts encrypting an existing column in place (app_label.Model.field, "
        "--from plaintext or the library that wrote it), or with --finish the one that drops the legacy "
        "column once reencrypt adopted every row; print the lines that replace the field in models.py. "
        "The migrations only add columns, drop NOT NULL and the old column's indexes; the finishing one "
        "refuses to drop a column that still holds a value."
    )

    def add_arguments(self, parser):
        parser.add_argument("field", metavar="app_label.Model.field", help="The field to adopt.")
        parser.add_argument(
            "--from",
            dest="source",
            choices=list(adoption_sources.SOURCES),
            help="What the column holds today: plaintext, or the library whose field wrote it. "
            "Required unless --finish.",
        )
        parser.add_argument(
            "--finish",
            action="store_true",
            help="Write the migration that drops the legacy column (after `reencrypt --verify` passed).",
        )
        parser.add_argument(
            "--blind-index",
            nargs="?",
            const="",
            default=None,
            metavar="NAME",
            help="Also add a BlindIndexField (default name <field>_bidx), unique if the field was.",
        )
        parser.add_argument(
            "--legacy-name",
            metavar="NAME",
            help="The attribute the old column keeps during the adoption (default <field>_legacy).",
        )
        parser.add_argument(
            "--column", metavar="NAME", help="The column of the new encrypted field (default <field>_enc)."
        )
        parser.add_argument(
            "--name", metavar="NAME", help="The migration's name, without its number (default: generated)."
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Print the migration instead of writing it."
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print a JSON document: migration name, path, operations, the model edit (and the "
            "migration's text with --dry-run).",
        )

    def handle(self, *args, **o):
        if o["finish"]:
            given = [flag for flag, key in FINISH_REFUSES if o[key] is not None]
            if given:
                raise CommandError(f"--finish takes none of {', '.join(given)}")
        elif o["source"] is None:
            raise CommandError("--from is required (plaintext or the library that wrote the column)")
        try:
            if o["finish"]:
                plan = adoption_plan.finish(o["field"], name=o["name"])
            else:
                index = o["blind_index"]
                if index == "":
                    index = f"{o['field'].rsplit('.', 1)[-1]}_bidx"
                plan = adoption_plan.start(
                    o["field"],
                    o["source"],
                    legacy_name=o["legacy_name"],
                    column=o["column"],
                    blind_index=index,
                    name=o["name"],
                )
        except adoption_plan.PlanError as exc:
            raise CommandError(str(exc)) from None
        if not o["dry_run"]:
            adoption_plan.write(plan)
        if o["json"]:
            data = {
                "migration": plan.name,
                "path": str(plan.path),
                "written": not o["dry_run"],
                "operations": plan.operations,
                "model_edit": plan.edit.as_dict(),
            }
            if o["dry_run"]:
                data["text"] = plan.text
            self.stdout.write(reporting.dumps(data))
            return
        if o["dry_run"]:
            self.stdout.write(f"# {plan.path} (not written: --dry-run)\n{plan.text}")
        else:
            self.stdout.write(f"Wrote {plan.path}")
        for line in plan.operations:
            self.stdout.write(f"  - {line}")
        self.stdout.write(self._edit_text(plan, finish=o["finish"]))

    def _edit_text(self, plan: adoption_plan.AdoptionPlan, finish: bool) -> str:
        edit = plan.edit
        what = " and ".join(f"`{n}`" for n in edit.replace)
        body = "\n".join(f"    {line}" for line in edit.lines)
        imports = "\n".join(f"    {line}" for line in edit.imports)
        label = edit.model
        if finish:
            steps = f"Then: makemigrations --check (no changes), migrate, reencrypt --model {label} --verify."
        else:
            steps = (
                "Then: makemigrations --check (no changes); sqlmigrate (only ADD COLUMN, DROP NOT NULL, "
                "DROP INDEX/CONSTRAINT); rotatekeys --init (a new keyring); migrate; "
                f"reencrypt --model {label}; reencrypt --model {label} --verify; "
                f"encryptcolumn {label}.{edit.replace[0]} --finish."
            )
        return (
            f"\nIn {edit.file}, class {label.split('.')[1]}: replace the line(s) declaring {what} with\n\n"
            f"{body}\n\nwith these imports:\n\n{imports}\n\n{steps}"
        )
