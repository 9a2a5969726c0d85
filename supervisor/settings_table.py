"""The README's settings table, generated from :data:`supervisor.config.FIELDS`.

``python -m supervisor.settings_table`` prints it, ``... --update README.md`` rewrites it in
place; a test checks the README holds it verbatim.
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
        elif f.default is None or f.default == ():
            default = "-"
        else:
            default = f"`{f.default}`"
        flag = f"`{f.flag}`, `--no-{f.flag[2:]}`" if f.kind is bool else f"`{f.flag}`"
        meaning = f.help.replace("|", "\\|")  # a table cell: a bare | would end it
        rows.append(f"| `{f.name}` | {flag} | `{f.env}` | {default} | {meaning} |")
    return "\n".join(rows) + "\n"


def update_readme(path: str) -> None:
    """Replace the settings table in the README at ``path`` with a fresh one."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    start = text.index("| setting | flag |")
    end = text.index("\n\n", start)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text[:start] + settings_table().rstrip("\n") + text[end:])


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--update"]:
        update_readme(sys.argv[2] if len(sys.argv) > 2 else "README.md")
    else:
        print(settings_table(), end="")
