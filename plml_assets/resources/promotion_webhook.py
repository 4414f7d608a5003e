"""Where the champion-move notices go: the webhook URL, its retry policy and the outbox, from the
``mlflow_registry`` resource's config and the environment (lib/registry/notify.py does the work).

* URL: ``MlflowRegistry.promotion_webhook_url``, else ``PLML_PROMOTION_WEBHOOK_URL`` (or the file
  ``PLML_PROMOTION_WEBHOOK_URL_FILE`` names); none: no event is written, nothing is sent.
* ``PLML_WEBHOOK_TOKEN`` (or ``_FILE``), when set, is sent as ``Authorization: Bearer ...``.
* Outbox: ``MlflowRegistry.promotion_outbox``, default ``$PLML_HOME/promotion_outbox.db``.

The URL may carry a token (``?token=``, ``user:token@``, a long path segment): it is shown only
through :func:`display_webhook_url`, and error texts pass through ``mask_secrets``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from plml_assets.lib.registry.notify import FlushResult, Outbox, RetryPolicy, champion_event, flush
from plml_assets.resources.paths import plml_home
from plml_assets.resources.secrets import MASK, env_value, mask_secrets, mask_url

URL_VARIABLE = "PLML_PROMOTION_WEBHOOK_URL"
TOKEN_VARIABLE = "PLML_WEBHOOK_TOKEN"
OUTBOX_FILE = "promotion_outbox.db"
LOG = logging.getLogger("plml.promotion_webhook")
# A path segment that looks like a credential (Slack/Teams-style hook URLs carry it in the path).
_TOKEN_SEGMENT = re.compile(r"(?=[^/]*\d)[A-Za-z0-9_\-.~%]{16,}")


def default_outbox_path() -> Path:
    return plml_home() / OUTBOX_FILE


def display_webhook_url(url: str | None) -> str | None:
    """``mask_url`` (password, secret query values) and every token-like path segment masked."""
    masked = mask_url(url)
    if not masked or "://" not in masked:
        return masked
    try:
        parts = urlsplit(masked)
    except ValueError:
        return mask_secrets(masked, environment=False)
    path = "/".join(MASK if _TOKEN_SEGMENT.fullmatch(seg) else seg for seg in parts.path.split("/"))
    return urlunsplit(parts._replace(path=path))


@dataclass(frozen=True)
class PromotionWebhook:
    url: str
    outbox: Outbox
    policy: RetryPolicy
    token: str | None = None

    @property
    def display_url(self) -> str:
        return display_webhook_url(self.url) or ""

    def mask(self, text: str) -> str:
        out = mask_secrets(text)
        for secret in {self.url, self.token, *(s for s in self.url.split("/") if _TOKEN_SEGMENT.fullmatch(s))} - {None, ""}:
            out = out.replace(secret, self.display_url if secret == self.url else MASK)
        return out

    def enqueue(self, event: str, model_name: str, version: str, previous_version: str | None, reasons: list[str]) -> str:
        return self.outbox.enqueue(champion_event(event, model_name, version, previous_version, reasons))

    def flush(self, max_seconds: float | None = None) -> FlushResult:
        return flush(self.outbox, self.url, self.policy, token=self.token, mask=self.mask, max_seconds=max_seconds)

    def deliver_quietly(self) -> FlushResult | None:
        """Flush after a champion move: a failure is logged and left in the outbox, never raised
        (the move itself has happened)."""
        try:
            result = self.flush()
        except Exception as exc:  # an unreadable outbox must not fail the promotion that already happened
            LOG.warning(f"promotion webhook {self.display_url}: the outbox {self.outbox.path} failed: {self.mask(f'{type(exc).__name__}: {exc}')}")
            return None
        if result.pending:
            why = result.error or "another process is delivering"
            LOG.warning(f"promotion webhook {self.display_url}: {why}; {len(result.pending)} notice(s) pending in {self.outbox.path} "
                        "(promotion_webhook_sensor or `plml notify --flush` delivers them)")
        return result


def resolve(url: str | None, outbox: str | None, tries: int, backoff_s: float, timeout_s: float) -> PromotionWebhook | None:
    """The webhook of a registry's config (``url`` unset: ``PLML_PROMOTION_WEBHOOK_URL``); None without a URL."""
    url = url or env_value(URL_VARIABLE)
    if not url:
        return None
    return PromotionWebhook(url=url, outbox=Outbox(outbox or default_outbox_path()),
                            policy=RetryPolicy(tries=tries, backoff_s=backoff_s, timeout_s=timeout_s), token=env_value(TOKEN_VARIABLE))
