"""The example app's own job kind, in a module of its own: the app and the workers
both import it (``JOBS_MODULES=jobs,examples.flask_app.jobs``)."""

import time

from pydantic import BaseModel, Field

import taskbeam


class ReportParams(BaseModel):
    title: str = Field("Weekly report", min_length=1, max_length=80, description="Its title.")
    sections: int = Field(5, ge=1, le=50, description="How many sections to write.")
    pause_s: float = Field(0.2, ge=0, le=2, description="Seconds spent on each section.")


@taskbeam.job(
    "report",
    params=ReportParams,
    description="Writes a report, one section at a time.",
    units="sections",
    summary=lambda result: f"{result['title']}: {result['sections']} sections",
)
def report(params: ReportParams) -> dict:
    for section in range(1, params.sections + 1):
        time.sleep(params.pause_s)  # the work of one section
        taskbeam.progress.update(section, params.sections, f"Section {section} written")
    return {"title": params.title, "sections": params.sections}
