"""The README's settings table, generated from :data:`supervisor.config.FIELDS`.

``python -m supervisor.settings_table`` prints it; a test checks the README holds it verbatim.
"""

from __future__ import annotations

from supervisor.config import FIELDS


def settings_table() -> str:
    rows = ["| setting | flag | environment | default | meaning |", "|---|---|---|---|---|"]
    for f in FIELDS:
        if callable(f.default):
            default = {"workers": "CPU count", "run_dir": "`$TMPDIR/supervisor-$UID`"}.get(
                f.name, "computed"
            )
        elif f.default is None:
            default = "-"
        else:
            default = f"`{f.default}`"
        flag = f"`{f.flag}`, `--no-{f.flag[2:]}`" if f.kind is bool else f"`{f.flag}`"
        rows.append(f"| `{f.name}` | {flag} | `{f.env}` | {default} | {f.help} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(settings_table(), end="")
