"""Credentials come from the environment (or a file the environment names) and are never shown.

* ``env_value(NAME)``: ``$NAME``, else the contents of the file ``$NAME_FILE`` names (the convention
  of Docker and Kubernetes secrets mounted as files), else None.
* ``mask_url(url)``: the URL with its password (``user:PASSWORD@``) and any secret-looking query
  parameter (``?password=``, ``token=``...) replaced by ``***``: ``postgresql://plml:***@host/db``.
* ``mask_secrets(text)``: any text (an exception message, a log line) with every URL's password and
  every credential the environment holds replaced by ``***``.

Everything plml prints, logs or records (``plml status``/``doctor``, Dagster logs and metadata,
MLflow params and tags) shows store URLs through these.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

MASK = "***"

#: Environment variables whose values are store URLs that may carry a password.
URL_VARIABLES = ("PLML_MLFLOW_TRACKING_URI", "PLML_OPTUNA_STORAGE", "PLML_DAGSTER_PG_URL", "MLFLOW_TRACKING_URI",
                 "MLFLOW_REGISTRY_URI", "PLML_DASK_SCHEDULER")
#: Environment variables whose values are credentials themselves.
SECRET_VARIABLES = ("PLML_DAGSTER_PG_PASSWORD", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "PGPASSWORD",
                    "DAGSTER_PG_PASSWORD", "AWS_SECRET_ACCESS_KEY", "PLML_WEBHOOK_TOKEN")
_SECRET_QUERY_KEYS = re.compile(r"pass(word)?|pwd|secret|token|api[_-]?key|access[_-]?key|signature|sig", re.IGNORECASE)
# scheme://user:password@  (the password may hold anything but '@' and '/', percent-encoded or not)
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s'\"]*:)(?P<pw>[^@\s'\"/]+)(?P<at>@)")
_QUERY_SECRET = re.compile(r"(?P<head>[?&;](?:" + _SECRET_QUERY_KEYS.pattern + r")=)(?P<value>[^&\s'\"#;]+)", re.IGNORECASE)


def env_value(name: str) -> str | None:
    """``$NAME`` if set and not empty, else the stripped contents of the file named by ``$NAME_FILE``."""
    value = os.environ.get(name)
    if value:
        return value
    path = os.environ.get(f"{name}_FILE")
    if not path:
        return None
    try:
        text = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise ValueError(f"{name}_FILE={path!r} cannot be read ({type(exc).__name__}: {exc.strerror or exc})") from None
    if not text:
        raise ValueError(f"{name}_FILE={path!r} is empty: expected the value of {name} in it")
    return text


def mask_url(url: str | None) -> str | None:
    """The URL with its password and secret query values replaced by ``***``; anything else unchanged."""
    if not url or "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # not parseable as a URL: mask by pattern instead
        return mask_secrets(url, environment=False)
    out = url
    if "@" in parts.netloc:
        userinfo, host = parts.netloc.rsplit("@", 1)
        if ":" in userinfo:
            out = out.replace(parts.netloc, f"{userinfo.split(':', 1)[0]}:{MASK}@{host}", 1)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(_SECRET_QUERY_KEYS.fullmatch(k) for k, _ in pairs):
            masked = urlencode([(k, MASK if _SECRET_QUERY_KEYS.fullmatch(k) else v) for k, v in pairs], safe="*", quote_via=quote)
            out = out.replace("?" + parts.query, "?" + masked, 1)
    return out


def known_secrets() -> list[str]:
    """The credentials this process's environment holds: passwords inside the store URLs, the
    secret variables themselves, and the contents of their ``_FILE`` files; longest first."""
    found: set[str] = set()
    for name in URL_VARIABLES:
        try:
            url = env_value(name)
        except ValueError:
            continue
        if not url:
            continue
        match = _USERINFO.search(url)
        if match:
            found.update({match.group("pw"), unquote(match.group("pw"))})
        for q in _QUERY_SECRET.finditer(url):
            found.update({q.group("value"), unquote(q.group("value"))})
    for name in SECRET_VARIABLES:
        try:
            value = env_value(name)
        except ValueError:
            continue
        if value:
            found.add(value)
    return sorted((s for s in found if len(s) >= 3), key=len, reverse=True)


def mask_secrets(text: object, environment: bool = True) -> str:
    """``text`` with every ``scheme://user:PASSWORD@`` and secret query value masked, and (with
    ``environment``) every credential in ``known_secrets()`` replaced by ``***`` wherever it appears."""
    out = str(text)
    out = _USERINFO.sub(lambda m: m.group("head") + MASK + m.group("at"), out)
    out = _QUERY_SECRET.sub(lambda m: m.group("head") + MASK, out)
    if environment:
        for secret in known_secrets():
            out = out.replace(secret, MASK)
    return out
