"""An example job of your own: one file, a live bar and a form in the page."""

import time

from pydantic import BaseModel, Field

import taskbeam


class CountdownParams(BaseModel):
    start: int = Field(10, ge=1, le=1000, description="Count down from this number.")
    pause_s: float = Field(0.2, ge=0, le=5, title="Pause (s)", description="Between numbers.")
    word: str = Field("liftoff", min_length=1, max_length=40, description="Said at zero.")
    shout: bool = Field(False, description="Say it in capitals.")


@taskbeam.job(
    "countdown",
    params=CountdownParams,
    description="Counts down, then says the word.",
    units="numbers",
    summary=lambda result: result["said"],
)
def countdown(params: CountdownParams) -> dict:
    for n in range(params.start, 0, -1):
        time.sleep(params.pause_s)
        taskbeam.progress.update(params.start - n + 1, params.start, f"{n}...")
    said = params.word.upper() if params.shout else params.word
    return {"counted": params.start, "said": said}
