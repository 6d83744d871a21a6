"""User-facing errors.

Anything a user can cause (a bad path, a wrong flag, weights that do not fit a config) raises
`ClipforgeError` with a one-line message that names the culprit. The CLI prints it as
``clipforge: error: <message>`` and exits with status 2, never with a traceback from deep inside torch.
"""


class ClipforgeError(Exception):
    """An error caused by the user's input; its message names the file, field or flag at fault."""


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type when it has none): what a one-line error quotes."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]
