"""Load shapes as data: when to start which user, computed up front so they can be tested.

Like Locust's LoadTestShape, a shape answers "what to launch when", but as a schedule of
`Launch`es (in `at_s` order) rather than a callback polled by a running system. The runner sleeps
until each `at_s` (against the run's clock, not relative sleeps, so delays do not add up) and
starts a flow for `user`:

- `repeat_until_s is None`: the user runs exactly one flow.
- `repeat_until_s = T`: the user loops flows, starting another after each one ends, while the run
  clock is before T. T is a start deadline, not a kill time: the flow in flight at T finishes
  (bounded by the flow timeout).
- `user is None` (open model, `Poisson`): one flow on any free wallet; the runner picks it and
  must never wait for one (no free wallet means the arrival is dropped and recorded), or a slow
  system would slow the generator down and hide its own slowness.

Users are 0-based indices into the run's wallets. `duration_s = 0` means one flow per user for
every shape except `steps`, whose length is len(levels) x hold_s (see `Steps`).

User data: JSON documents of exactly 1 KiB / 10 KiB / 100 KiB (`small` / `medium` / `large`);
`mixed` cycles small, medium, large by flow index, so every prefix of a run is balanced.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from workbench.driver.config import DATA_SIZES, SHAPES

if TYPE_CHECKING:
    from workbench.driver.config import RunConfig

Rng = np.random.Generator | random.Random

SIZES = tuple(s for s in DATA_SIZES if s != "mixed")  # small, medium, large: the cycle's order
SIZE_BYTES = {"small": 1024, "medium": 10 * 1024, "large": 100 * 1024}


@dataclass(frozen=True, slots=True)
class Launch:
    """Start a flow for `user` at `at_s` (seconds from run start); see the module doc."""

    at_s: float
    user: int | None
    repeat_until_s: float | None = None
    step: int | None = None  # steps shape: the step the user joined in (not its flows' step)
    level: int | None = None  # steps shape: that step's user count


@runtime_checkable
class LoadShape(Protocol):
    name: ClassVar[str]

    def launches(self, rng: Rng | None = None) -> Iterator[Launch]:
        """The schedule in `at_s` order; the same for the same seed or rng state."""
        ...

    def expected_flows(self) -> int | None:
        """Flows the schedule will start, or None when it depends on the system's speed."""
        ...

    def wallets_needed(self) -> int: ...

    def start_deadline_s(self) -> float:
        """When the schedule starts its last flow, seconds from run start."""
        ...

    def step_at(self, t: float) -> int | None:
        """The step a flow starting at `t` belongs to (steps shape), else None."""
        ...

    def describe(self) -> dict[str, Any]: ...


class _Shape:
    """What most shapes share: no steps, a closed model, a description built from a few facts."""

    name: ClassVar[str]
    model: ClassVar[str] = "closed"  # a user starts its next flow only after the last one

    def launches(self, rng: Rng | None = None) -> Iterator[Launch]:
        raise NotImplementedError

    def expected_flows(self) -> int | None:
        raise NotImplementedError

    def wallets_needed(self) -> int:
        raise NotImplementedError

    def step_at(self, t: float) -> int | None:
        return None

    def start_deadline_s(self) -> float:
        """No flow starts after this (run-relative seconds)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-safe facts for the report, including the shape's own parameters."""
        params = vars(self)
        return {
            "shape": self.name,
            "model": self.model,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in params.items()},
            "wallets": self.wallets_needed(),
            "expected_flows": self.expected_flows(),
            "start_deadline_s": self.start_deadline_s(),
        }


def _stagger(users: int, ramp_s: float, start_s: float = 0.0) -> Iterator[float]:
    """Start times of `users` users spread evenly over [start_s, start_s + ramp_s).

    User i starts at i * ramp_s / users, so the last starts one interval before the ramp's end
    and the arrival rate is exactly users / ramp_s (Locust's spawn-rate convention).
    """
    gap = ramp_s / users
    return (start_s + i * gap for i in range(users))


def _require(ok: bool, message: str) -> None:
    # Shapes are built from a validated RunConfig; this guards programming errors only.
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class Staggered(_Shape):
    """`users` users, one flow each, started evenly over `ramp_s` (the last before `ramp_s`)."""

    users: int
    ramp_s: float = 0.0
    name: ClassVar[str] = "staggered"

    def __post_init__(self) -> None:
        _require(self.users >= 1 and self.ramp_s >= 0, f"bad staggered shape {self}")

    def launches(self, rng: Rng | None = None) -> Iterator[Launch]:
        for user, at in enumerate(_stagger(self.users, self.ramp_s)):
            yield Launch(at, user)

    def expected_flows(self) -> int | None:
        return self.users

    def wallets_needed(self) -> int:
        return self.users

    def start_deadline_s(self) -> float:
        return self.ramp_s * (self.users - 1) / self.users


@dataclass(frozen=True)
class Burst(Staggered):
    """`users` users, one flow each, all started at 0."""

    users: int
    ramp_s: float = 0.0
    name: ClassVar[str] = "burst"

    def __post_init__(self) -> None:
        _require(self.users >= 1 and self.ramp_s == 0, f"bad burst shape {self}")


@dataclass(frozen=True)
class Hold(Staggered):
    """Users started as `Staggered`, each looping flows until `duration_s` (0: one flow each)."""

    users: int
    ramp_s: float = 0.0
    duration_s: float = 0.0
    name: ClassVar[str] = "hold"

    def __post_init__(self) -> None:
        ok = self.users >= 1 and 0 <= self.ramp_s and self.duration_s >= 0
        _require(ok and (self.duration_s == 0 or self.ramp_s <= self.duration_s), f"bad {self}")

    def launches(self, rng: Rng | None = None) -> Iterator[Launch]:
        until = self.duration_s or None
        for user, at in enumerate(_stagger(self.users, self.ramp_s)):
            yield Launch(at, user, repeat_until_s=until)

    def expected_flows(self) -> int | None:
        return self.users if self.duration_s == 0 else None

    def start_deadline_s(self) -> float:
        return self.duration_s or super().start_deadline_s()


@dataclass(frozen=True)
class Poisson(_Shape):
    """Open model: arrivals at `rate_per_s` (exponential gaps), one flow each, on a free wallet.

    Arrivals never wait for earlier flows. With `duration_s > 0` they come until `duration_s`
    from a pool of `users` wallets; with `duration_s == 0`, exactly `users` arrivals come. The
    first arrival is one random gap after 0, as in a Poisson process.
    """

    rate_per_s: float
    duration_s: float = 0.0
    seed: int = 0
    users: int = 25
    name: ClassVar[str] = "poisson"
    model: ClassVar[str] = "open"

    def __post_init__(self) -> None:
        ok = self.rate_per_s > 0 and self.duration_s >= 0 and self.users >= 1
        _require(ok, f"bad poisson shape {self}")

    def launches(self, rng: Rng | None = None) -> Iterator[Launch]:
        """Without `rng`, the shape's seed. With one, a private stream seeded by one draw from it,
        so a caller's later draws (while the lazy schedule runs) cannot change the schedule."""
        stream = _private_stream(rng, self.seed)
        t, n = 0.0, 0
        while True:
            for gap in stream.exponential(1 / self.rate_per_s, size=256).tolist():
                t += gap
                if (self.duration_s > 0 and t >= self.duration_s) or (
                    self.duration_s == 0 and n >= self.users
                ):
                    return
                yield Launch(t, None)
                n += 1

    def expected_flows(self) -> int:
        """Exact for `launches()` without an rng (the seeded schedule is known in advance)."""
        return self.users if self.duration_s == 0 else sum(1 for _ in self.launches())

    def wallets_needed(self) -> int:
        return self.users

    def start_deadline_s(self) -> float:
        if self.duration_s:
            return self.duration_s
        return max((launch.at_s for launch in self.launches()), default=0.0)


def _private_stream(rng: Rng | None, seed: int) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng(seed)
    if isinstance(rng, random.Random):
        return np.random.default_rng(rng.getrandbits(64))
    return np.random.default_rng(int(rng.integers(2**63)))


@dataclass(frozen=True)
class Steps(_Shape):
    """Users raised level by level; each level held `hold_s` with every user looping flows.

    Step k spans [k * hold_s, (k + 1) * hold_s). At its start it adds users to reach
    `levels[k]`, spread over `ramp_s` (as `Staggered`). Every user, old or new, loops flows
    until the end of the whole shape (len(levels) * hold_s), so load only rises. A flow belongs
    to the step its start time falls in (`step_at`), not to the step its user joined in.
    `duration_s` plays no part: one flow per user would leave a level idle once its flows end,
    and a level must carry load throughout its hold for its throughput and latency to mean
    anything.
    """

    levels: tuple[int, ...]
    hold_s: float
    ramp_s: float = 0.0
    name: ClassVar[str] = "steps"

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(self.levels))
        rising = all(b > a for a, b in zip((0, *self.levels), self.levels, strict=False))
        ok = bool(self.levels) and rising and self.hold_s > 0 and 0 <= self.ramp_s <= self.hold_s
        _require(ok, f"bad steps shape {self}")

    def launches(self, rng: Rng | None = None) -> Iterator[Launch]:
        end, before = self.end_s(), 0
        for step, level in enumerate(self.levels):
            new = level - before
            starts = _stagger(new, self.ramp_s, start_s=step * self.hold_s)
            for j, at in enumerate(starts):
                yield Launch(at, before + j, repeat_until_s=end, step=step, level=level)
            before = level

    def end_s(self) -> float:
        return len(self.levels) * self.hold_s

    def step_at(self, t: float) -> int | None:
        if not 0 <= t < self.end_s():
            return None
        return min(int(t // self.hold_s), len(self.levels) - 1)

    def expected_flows(self) -> None:
        return None

    def wallets_needed(self) -> int:
        return self.levels[-1]

    def start_deadline_s(self) -> float:
        return self.end_s()

    def describe(self) -> dict[str, Any]:
        bounds = [
            {"step": k, "users": level, "start_s": k * self.hold_s, "end_s": (k + 1) * self.hold_s}
            for k, level in enumerate(self.levels)
        ]
        return {**super().describe(), "steps": bounds}


def default_rate_per_s(users: int, ramp_s: float) -> float:
    """Poisson rate when none is given: `users` arrivals per `ramp_s` (per second if 0), the
    same mean rate as the staggered shape with those parameters."""
    return users / ramp_s if ramp_s > 0 else float(users)


def shape_from_config(cfg: RunConfig) -> LoadShape:
    """The shape a validated RunConfig asks for."""
    assert cfg.shape in SHAPES, cfg.shape
    if cfg.shape == "burst":
        return Burst(cfg.users)
    if cfg.shape == "hold":
        return Hold(cfg.users, cfg.ramp_s, cfg.duration_s)
    if cfg.shape == "poisson":
        rate = cfg.rate_per_s or default_rate_per_s(cfg.users, cfg.ramp_s)
        return Poisson(rate, cfg.duration_s, cfg.seed, cfg.users)
    if cfg.shape == "steps":
        return Steps(tuple(cfg.steps), cfg.step_hold_s, cfg.ramp_s)
    return Staggered(cfg.users, cfg.ramp_s)


# ---- user data ---------------------------------------------------------------------------------


def data_size_for(data_size: str, flow_id: int, rng: object = None) -> str:
    """The size of flow `flow_id`: fixed, or for `mixed` small, medium, large in turn.

    Cycling needs no randomness (`rng` is accepted and unused), keeps every prefix of a run
    balanced within one flow per size, and does not depend on the order flows happen to start.
    """
    if data_size == "mixed":
        return SIZES[flow_id % len(SIZES)]
    if data_size not in SIZE_BYTES:
        raise ValueError(f"unknown data size {data_size!r}")
    return data_size


def data_sizes(data_size: str, n: int, rng: object = None) -> list[str]:
    """Sizes of flows 0..n-1 (see `data_size_for`)."""
    return [data_size_for(data_size, i) for i in range(n)]


_WORDS = (
    "morning run coffee playlist weekend trip photo friend message reply meeting project budget "
    "review recipe book movie podcast episode workout distance pace sleep steps goal note list "
    "order delivery invoice account device update settings privacy share consent summary insight "
    "city weather lunch dinner family travel music album artist song listen watch read write"
).split()
_SOURCES = {
    "chatgpt": "conversation",
    "spotify": "stream",
    "strava": "activity",
    "gmail": "email",
    "reddit": "comment",
}
_EPOCH_2024 = 1_704_067_200


def make_user_data(
    size: str, user: int, rng: np.random.Generator | None = None, *, seed: int = 0
) -> bytes:
    """A user's data export: compact ASCII JSON of exactly SIZE_BYTES[size] bytes.

    Records like a personal data export (source, kind, time, text) until the next would not
    fit, then a `note` of filler words pads to the exact length. Deterministic: the same rng
    state, or the same (seed, user) without an rng, gives the same bytes.
    """
    target = SIZE_BYTES[size]
    rng = rng if rng is not None else np.random.default_rng([seed, user])
    head = json.dumps(
        {"schema": "workbench.user-data/1", "user": {"id": user, "handle": f"user-{user:05d}"}},
        separators=(",", ":"),
    )
    prefix, middle, suffix = head[:-1] + ',"records":[', '],"note":"', '"}'
    room = target - len(prefix) - len(middle) - len(suffix)
    body: list[str] = []
    used = -1  # the first record needs no comma
    for record in _records(user, rng, n=room // 100 + 1):  # a record is at least ~100 bytes
        if used + 1 + len(record) > room:
            break
        body.append(record)
        used += 1 + len(record)
    used = max(used, 0)
    text = prefix + ",".join(body) + middle + _filler(room - used, rng) + suffix
    data = text.encode("ascii")
    assert len(data) == target, (len(data), target)
    return data


def _records(user: int, rng: np.random.Generator, n: int) -> Iterator[str]:
    """Up to `n` JSON records; the draws are vectorised, the strings made only as needed.

    Written with f-strings, not json.dumps (3x faster): every value is drawn from fixed ASCII
    words without quotes or backslashes, so nothing needs escaping.
    """
    sources = list(_SOURCES)
    source_ix = rng.integers(0, len(sources), size=n).tolist()
    times = (_EPOCH_2024 + rng.integers(0, 365 * 86_400, size=n)).tolist()
    lengths = rng.integers(4, 24, size=n).tolist()
    words = rng.integers(0, len(_WORDS), size=sum(lengths)).tolist()
    w = 0
    for i in range(n):
        source = sources[source_ix[i]]
        text = " ".join([_WORDS[k] for k in words[w : w + lengths[i]]])
        w += lengths[i]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(times[i]))
        yield (
            f'{{"id":"{user}-{i}","source":"{source}","kind":"{_SOURCES[source]}",'
            f'"at":"{stamp}","text":"{text}"}}'
        )


def _filler(n: int, rng: np.random.Generator) -> str:
    """Exactly `n` characters of words (no quotes or escapes, so bytes == characters)."""
    words = [_WORDS[k] for k in rng.integers(0, len(_WORDS), size=n // 3 + 1).tolist()]
    return " ".join(words)[:n].ljust(n)
