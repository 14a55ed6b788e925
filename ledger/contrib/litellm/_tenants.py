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
``by_tree``            the nearest of ``key:``,       the level that refused
                       ``user:``, ``team:``, ``org:``
                       (its parents: the others)
=====================  =============================  ==========================

``by_end_user`` is the default: a proxy without a key database still has
the ``user`` field. The flat maps pick *one* tenant. ``by_tree`` holds at
the key's tenant, the leaf of a nested tree key -> user -> team ->
organisation (docs/nested.md): the ledger reserves at every ancestor in the
same transaction, so one hold is exact at every level at once. Its
:class:`Payer` carries the levels above the leaf (``parents``, nearest
first) because a budget that creates unknown tenants must create them under
the right parents; the ledger itself reads the tree from its own rows, not
from the payer, and a refusal names the level the ledger says refused
(``limited_by``). The ids carry their level as a prefix, so a level can be
named from an id alone (:func:`level_of`).
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
    """The tenant a call is held at, and the level a refusal names (``"team"``...).

    ``parents`` are the levels above it, nearest first, for a tree map
    (:func:`by_tree`); empty for the flat maps. They say where a missing
    tenant is created (``unknown="create"``) and how a refusal at one of them
    is named; the hold itself reserves at whatever ancestors the ledger has.
    """

    tenant_id: str
    level: str
    parents: tuple[Payer, ...] = ()

    def path(self) -> tuple[Payer, ...]:
        """The levels from the root down to this one (the order to create them in)."""
        return (*reversed(self.parents), Payer(self.tenant_id, self.level))


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


def by_tree(caller: Caller) -> Payer | None:
    """The nested tree: held at ``key:``, under ``user:``, ``team:``, ``org:``.

    Every level the caller has, in the order key -> user -> team ->
    organisation; the nearest one is the tenant held at, the others its
    parents. A level the caller lacks is skipped (a key without a user sits
    directly under its team). None when the caller has none of them.
    """
    levels = [
        p
        for p in (by_key(caller), by_user(caller), by_team(caller), by_org(caller))
        if p is not None
    ]
    if not levels:
        return None
    leaf, *parents = levels
    return Payer(leaf.tenant_id, leaf.level, tuple(parents))


#: The level each id prefix names (the ids :func:`by_tree` and the flat maps make).
LEVELS = {"key:": "key", "user:": "user", "team:": "team", "org:": "organisation"}


def level_of(tenant_id: str) -> str:
    """The level a tenant id names by its prefix (``team:t1`` -> ``team``), else ``tenant``."""
    for prefix, level in LEVELS.items():
        if tenant_id.startswith(prefix):
            return level
    return "tenant"


#: The names ``LEDGER_LITELLM_TENANT`` accepts.
MAPS: dict[str, TenantMap] = {
    "end_user": by_end_user,
    "key": by_key,
    "user": by_user,
    "team": by_team,
    "org": by_org,
    "tree": by_tree,
}

__all__ = [
    "LEVELS",
    "MAPS",
    "Caller",
    "Payer",
    "TenantMap",
    "by_end_user",
    "by_key",
    "by_org",
    "by_team",
    "by_tree",
    "by_user",
    "level_of",
]
