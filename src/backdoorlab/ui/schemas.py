"""Request bodies of the web tool's API: every field typed, bounded and validated before any work starts.

Unknown fields are refused (``extra="forbid"``), ids must match their pattern and are then looked up in the
tool's own tables (never joined onto a path), and numbers carry the same ranges as the library's checks.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from backdoorlab.ui.decisions import APPROACHES
from backdoorlab.ui.jobs import JOB_ID
from backdoorlab.ui.registry import MODEL_ID, MODEL_NAME
from backdoorlab.ui.sessions import ATTACK_ID
from backdoorlab.ui.triggers import LAYOUTS, SHAPES, TRIGGER_ID

DATASET = r"^[a-z0-9][a-z0-9_-]{0,39}$"
RUN_ID = r"^[0-9a-f]{4,64}$"
ANALYST = r"^[\w .@-]{0,40}$"
HEX_COLOR = r"^#[0-9a-fA-F]{6}$"


def _pattern(regex: str, what: str, fix: str):
    import re

    compiled = re.compile(regex)

    def check(value: str) -> str:
        if not compiled.match(value):
            raise ValueError(f"{value[:40]!r} is not {what}; {fix}")
        return value

    return AfterValidator(check)


ModelId = Annotated[
    str,
    Field(max_length=64),
    _pattern(MODEL_ID, "a model id (64 lowercase hex characters)", "pick a model from the list"),
]
AttackId = Annotated[
    str,
    Field(max_length=16),
    _pattern(ATTACK_ID, "an attack id (16 hex characters)", "generate adversarial examples first"),
]
TriggerId = Annotated[
    str,
    Field(max_length=12),
    _pattern(TRIGGER_ID, "a trigger id (12 hex characters)", "pick one of your kept triggers"),
]
Dataset = Annotated[
    str, Field(max_length=40), _pattern(DATASET, "a data set name", "pick a data set from the list")
]
Name = Annotated[
    str,
    Field(max_length=80),
    _pattern(MODEL_NAME, "a usable name", "use 1-80 letters, digits, spaces and . , : ( ) + # @ -"),
]
Analyst = Annotated[
    str,
    Field(max_length=40),
    _pattern(ANALYST, "a usable analyst name", "use up to 40 letters, digits, spaces and . @ -"),
]
HexColor = Annotated[str, Field(max_length=7), _pattern(HEX_COLOR, "a colour", "write it as #rrggbb")]

__all__ = [
    "ANALYST",
    "DATASET",
    "JOB_ID",
    "RUN_ID",
    "ApplyRequest",
    "AttackRequest",
    "CandidateSpec",
    "CandidatesRequest",
    "ColorSpec",
    "CropSpec",
    "DecisionRequest",
    "KeepRequest",
    "SavedSpec",
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), str_max_length=4000)


class AttackRequest(Strict):
    """``POST /api/attacks``: adversarial examples of a model on a data set (Fig. 20a)."""

    model_id: ModelId
    dataset: Dataset
    method: Literal["smoothadv", "smoothing", "basic"] = "smoothadv"
    eps: float | None = Field(
        None, gt=0, le=1000, description="L2 radius on [0, 1] pixels (None: paper's ε=60 scaled)"
    )
    sigma: float = Field(0.5, gt=0, le=4)
    steps: int = Field(100, ge=1, le=2000)
    m: int = Field(8, ge=1, le=128)
    n_images: int = Field(10, ge=1, le=64)
    n_eval: int = Field(50, ge=1, le=2000)
    classes: list[int] | None = Field(None, max_length=1000)
    seed: int = Field(0, ge=0, le=2**31 - 1)


class ColorSpec(Strict):
    """A colour patch: colours picked from pixels or a colour picker, in a shape (Fig. 20b)."""

    kind: Literal["color"]
    colors: list[HexColor] = Field(min_length=1, max_length=4)
    shape: Literal[SHAPES] = "square"  # type: ignore[valid-type]
    size: int = Field(ge=1, le=256)
    layout: Literal[LAYOUTS] = "blocks"  # type: ignore[valid-type]


class CropSpec(Strict):
    """A square box cropped from one probe image of the attack session (its adversarial example by default)."""

    kind: Literal["crop"]
    index: int = Field(ge=0, le=10_000)
    row: int = Field(ge=0, le=10_000)
    col: int = Field(ge=0, le=10_000)
    size: int = Field(ge=1, le=256)
    image: Literal["adversarial", "clean"] = "adversarial"


class CandidateSpec(Strict):
    """One of the session's automatic candidates (after ``POST /api/candidates``)."""

    kind: Literal["candidate"]
    index: int = Field(ge=0, le=100_000)


class SavedSpec(Strict):
    """A trigger kept earlier in this session."""

    kind: Literal["saved"]
    trigger_id: TriggerId


TriggerSpec = Annotated[ColorSpec | CropSpec | CandidateSpec | SavedSpec, Field(discriminator="kind")]


class ApplyRequest(Strict):
    """``POST /api/triggers/apply``: paste a trigger on the session's held-out images and measure it."""

    attack_id: AttackId
    trigger: TriggerSpec
    placement: Literal["random", "fixed"] = "random"
    at: tuple[Annotated[int, Field(ge=0, le=10_000)], Annotated[int, Field(ge=0, le=10_000)]] | None = None
    reps: int = Field(10, ge=1, le=50)


class KeepRequest(ApplyRequest):
    """``POST /api/triggers``: keep (and name) a trigger."""

    name: Name


class CandidatesRequest(Strict):
    """``POST /api/candidates``: the audit's automatic candidates for a session (§3.3)."""

    attack_id: AttackId
    size: int | None = Field(None, ge=1, le=256)
    n_colors: int = Field(3, ge=1, le=6)
    reps: int = Field(10, ge=1, le=50)


class DecisionRequest(Strict):
    """``POST /api/decisions``: an analyst's verdict on a model (Table 2's user study)."""

    model_id: ModelId
    verdict: Literal["poisoned", "clean"]
    note: str = Field("", max_length=2000)
    analyst: Analyst = ""
    approach: Literal[APPROACHES] = "denoised-smoothing"  # type: ignore[valid-type]
