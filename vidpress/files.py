"""Reading the files vidpress loads (JSON configs, indexes and records; safetensors weights), with errors that name
the file and the problem instead of a bare KeyError or JSONDecodeError."""

from __future__ import annotations

import json
from pathlib import Path

_JSON_KINDS = {dict: "object", list: "array"}


def read_json(path, what: str, kind: type = dict, remedy: str = ""):
    """The JSON value in `path`, the `what` ("clip index metadata"); it must be a `kind` (dict: a JSON object, list:
    a JSON array). An unreadable, empty or invalid file, or another top-level value, is a ValueError that names
    the file, what it should hold, what was wrong and, when given, the `remedy` ("delete it to ...")."""
    try:
        return _read_json(Path(path), what, kind)
    except ValueError as error:
        raise ValueError(f"{error}; {remedy}" if remedy else str(error)) from None


def _read_json(path: Path, what: str, kind: type):
    expected = f"a JSON {_JSON_KINDS.get(kind, kind.__name__)}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"{path}: cannot read the {what} ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the {what} is not UTF-8 text (expected {expected})") from None
    if not text.strip():
        raise ValueError(f"{path}: the {what} is empty (expected {expected}); the file was cut short or never written")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: the {what} is not valid JSON ({error.msg} at line {error.lineno} column "
                         f"{error.colno}; expected {expected})") from None
    if not isinstance(value, kind):
        found = _JSON_KINDS.get(type(value), "null" if value is None else type(value).__name__)
        raise ValueError(f"{path}: the {what} must be {expected}; the file holds a JSON {found}")
    return value


def require_keys(entry, keys: tuple[str, ...], where: str) -> None:
    """A ValueError naming `where` when `entry` is not a JSON object holding every one of `keys`."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a JSON object with the fields {', '.join(keys)}; got {entry!r:.80}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)} (expected {', '.join(keys)})")


def load_safetensors(path, what: str, device: str = "cpu") -> dict:
    """The tensors of the safetensors file `path` (the `what`, "policy weights") on `device`; a file that is not a
    complete safetensors file (truncated, another format) is a ValueError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError) as error:
        raise _not_safetensors(path, what, error) from None


def weights_error(folder, error: Exception) -> ValueError:
    """The error for a model `folder` whose weights failed to load with `error` (a SafetensorError): it names the
    first *.safetensors file there that is not complete (transformers' own message names none)."""
    from safetensors import SafetensorError, safe_open

    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as broken:
            return _not_safetensors(path, "model weights", broken)
    return ValueError(f"{folder}: cannot read the model weights ({error})")


def _not_safetensors(path, what: str, error: Exception) -> ValueError:
    return ValueError(f"{path}: cannot read the {what} ({error}); it is not a complete safetensors file (truncated "
                      "or another format): copy or save it again")
