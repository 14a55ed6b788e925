"""Who pays for a call: from the request and the proxy's key to one ledger tenant.

A :class:`Caller` is what LiteLLM knows about the request: the OpenAI
``user`` field (the end user) and, on a proxy with its key database, the
key, its user, team and organisation. A *tenant map* is any callable
``Caller -> Payer | None``; None means the request names nobody who pays,
and the call is refused. The maps shipped here:

=====================  =============================  ==========================
map                    tenant id it holds at          level named in a refusal
=====================  =============================  ==========================
``by_end_user``        the ``user`` field, unchanged  ``user``
``by_key``             ``key:<key hash>``             ``key``
``by_user``            ``user:<user_id>``             ``user``
``by_team``            ``team:<team_id>``             ``team``
``by_org``             ``org:<org_id>``               ``organisation``
=====================  =============================  ==========================

``by_end_user`` is the default: a proxy without a key database still has
the ``user`` field. On today's flat ledger a map picks *one* tenant. With
nested budgets (not yet available, docs/litellm.md "Next"), ``by_key``
will hold at the key's tenant, whose ancestors ``user:``, ``team:`` and
``org:`` are reserved at automatically: that is why the ids carry their
level as a prefix and why the map returns one tenant, the leaf.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Caller:
    """What the proxy (or the SDK call) says about who is calling."""

    end_user: str | None = None
    key: str | None = None
    key_alias: str | None = None
    user_id: str | None = None
    team_id: str | None = None
    org_id: str | None = None

    @classmethod
    def from_proxy(cls, user_api_key_dict: Any, data: Mapping[str, Any]) -> Caller:
        """Read the caller from the proxy's pre-call hook arguments."""

        def text(value: Any) -> str | None:
            return value if isinstance(value, str) and value else None

        return cls(
            end_user=text(data.get("user")),
            key=text(getattr(user_api_key_dict, "token", None)),
            key_alias=text(getattr(user_api_key_dict, "key_alias", None)),
            user_id=text(getattr(user_api_key_dict, "user_id", None)),
            team_id=text(getattr(user_api_key_dict, "team_id", None)),
            org_id=text(getattr(user_api_key_dict, "org_id", None)),
        )


@dataclass(frozen=True)
class Payer:
    """The tenant a call is held at, and the level a refusal names (``"team"``...)."""

    tenant_id: str
    level: str


TenantMap = Callable[[Caller], Payer | None]


def by_end_user(caller: Caller) -> Payer | None:
    """The request's ``user`` field, unchanged (the default)."""
    return None if caller.end_user is None else Payer(caller.end_user, "user")


def by_key(caller: Caller) -> Payer | None:
    """``key:<hashed key>``: the proxy's virtual key (its hash, never the secret)."""
    return None if caller.key is None else Payer(f"key:{caller.key}", "key")


def by_user(caller: Caller) -> Payer | None:
    """``user:<user_id>``: the internal user the key belongs to."""
    return None if caller.user_id is None else Payer(f"user:{caller.user_id}", "user")


def by_team(caller: Caller) -> Payer | None:
    """``team:<team_id>``."""
    return None if caller.team_id is None else Payer(f"team:{caller.team_id}", "team")


def by_org(caller: Caller) -> Payer | None:
    """``org:<org_id>``."""
    return None if caller.org_id is None else Payer(f"org:{caller.org_id}", "organisation")


#: The names ``LEDGER_LITELLM_TENANT`` accepts.
MAPS: dict[str, TenantMap] = {
    "end_user": by_end_user,
    "key": by_key,
    "user": by_user,
    "team": by_team,
    "org": by_org,
}

__all__ = [
    "MAPS",
    "Caller",
    "Payer",
    "TenantMap",
    "by_end_user",
    "by_key",
    "by_org",
    "by_team",
    "by_user",
]
