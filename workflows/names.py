"""Names shared by every process: task queues, workflow ids, search attributes."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

CONTROL_TASK_QUEUE = "stageflow"


def pool_queue(pool: str) -> str:
    """The queue an agent polls for a lease while it has a free job slot."""
    return f"pool/{pool}"


def agent_queue(agent_id: str) -> str:
    """The queue of one agent's step activities (download, run task, ship logs)."""
    return f"agent/{agent_id}"


def pipeline_workflow_id(pipeline: str) -> str:
    return f"pipeline/{pipeline}"


def release_workflow_id(pipeline: str, number: int) -> str:
    return f"release/{pipeline}/{number}"


def stage_workflow_id(pipeline: str, number: int, stage: str, attempt: int) -> str:
    return f"release/{pipeline}/{number}/{stage}/{attempt}"


SA_PIPELINE = SearchAttributeKey.for_keyword("StageflowPipeline")
SA_RELEASE = SearchAttributeKey.for_keyword("StageflowRelease")
SA_STAGE = SearchAttributeKey.for_keyword("StageflowStage")
SA_STATUS = SearchAttributeKey.for_keyword("StageflowStatus")
SA_CREATED_BY = SearchAttributeKey.for_keyword("StageflowCreatedBy")
SA_WORK_ITEMS = SearchAttributeKey.for_keyword_list("StageflowWorkItems")
SA_ARTIFACTS = SearchAttributeKey.for_keyword_list("StageflowArtifacts")

SEARCH_ATTRIBUTES = [
    SA_PIPELINE,
    SA_RELEASE,
    SA_STAGE,
    SA_STATUS,
    SA_CREATED_BY,
    SA_WORK_ITEMS,
    SA_ARTIFACTS,
]
