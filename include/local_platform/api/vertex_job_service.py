"""google.cloud.aiplatform.v1.JobService (batch prediction jobs, custom jobs) and PipelineService."""

from __future__ import annotations

from google.cloud.aiplatform_v1.types import batch_prediction_job, custom_job, job_service, pipeline_service
from google.cloud.aiplatform_v1.types import training_pipeline as training_pipeline_types
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2

from include.local_platform.api.vertex_grpc import Rpc
from include.local_platform.api.vertex_messages import pb, to_doc, to_message
from include.local_platform.api.vertex_model_service import page
from include.local_platform.context import Context
from include.local_platform.resources import vertex_batch_jobs, vertex_training

BatchJob, CustomJob = pb(batch_prediction_job.BatchPredictionJob), pb(custom_job.CustomJob)
Pipeline, Operation = pb(training_pipeline_types.TrainingPipeline), operations_pb2.Operation


def _empty(action) -> object:
    def answer(ctx: Context, request) -> object:
        action(ctx, request.name)
        return empty_pb2.Empty()

    return answer


def _jobs() -> dict[str, Rpc]:
    return {
        "CreateBatchPredictionJob": Rpc(
            pb(job_service.CreateBatchPredictionJobRequest), BatchJob,
            lambda ctx, request: to_message(vertex_batch_jobs.create(
                ctx, request.parent, to_doc(request.batch_prediction_job)), BatchJob)),
        "GetBatchPredictionJob": Rpc(pb(job_service.GetBatchPredictionJobRequest), BatchJob,
                                     lambda ctx, request: to_message(vertex_batch_jobs.get(ctx, request.name),
                                                                     BatchJob)),
        "ListBatchPredictionJobs": Rpc(
            pb(job_service.ListBatchPredictionJobsRequest), pb(job_service.ListBatchPredictionJobsResponse),
            lambda ctx, request: page(vertex_batch_jobs.list_jobs(ctx, request.parent, request.filter), request,
                                      pb(job_service.ListBatchPredictionJobsResponse), "batch_prediction_jobs")),
        "CancelBatchPredictionJob": Rpc(pb(job_service.CancelBatchPredictionJobRequest), empty_pb2.Empty,
                                        _empty(vertex_batch_jobs.cancel)),
        "DeleteBatchPredictionJob": Rpc(pb(job_service.DeleteBatchPredictionJobRequest), Operation,
                                        lambda ctx, request: to_message(vertex_batch_jobs.delete(ctx, request.name),
                                                                        Operation)),
        "GetCustomJob": Rpc(pb(job_service.GetCustomJobRequest), CustomJob,
                            lambda ctx, request: to_message(vertex_training.custom_job_view(
                                vertex_training.get_custom_job(ctx, request.name)), CustomJob)),
        "ListCustomJobs": Rpc(
            pb(job_service.ListCustomJobsRequest), pb(job_service.ListCustomJobsResponse),
            lambda ctx, request: page([vertex_training.custom_job_view(job) for job in
                                       vertex_training.list_custom_jobs(ctx, request.parent)], request,
                                      pb(job_service.ListCustomJobsResponse), "custom_jobs")),
        "CancelCustomJob": Rpc(pb(job_service.CancelCustomJobRequest), empty_pb2.Empty,
                               _empty(vertex_training.cancel_custom_job)),
        "DeleteCustomJob": Rpc(pb(job_service.DeleteCustomJobRequest), Operation,
                               lambda ctx, request: to_message(vertex_training.delete_custom_job(ctx, request.name),
                                                               Operation)),
    }


def _pipelines() -> dict[str, Rpc]:
    return {
        "CreateTrainingPipeline": Rpc(
            pb(pipeline_service.CreateTrainingPipelineRequest), Pipeline,
            lambda ctx, request: to_message(vertex_training.create_pipeline(
                ctx, request.parent, to_doc(request.training_pipeline)), Pipeline)),
        "GetTrainingPipeline": Rpc(pb(pipeline_service.GetTrainingPipelineRequest), Pipeline,
                                   lambda ctx, request: to_message(vertex_training.get_pipeline(ctx, request.name),
                                                                   Pipeline)),
        "ListTrainingPipelines": Rpc(
            pb(pipeline_service.ListTrainingPipelinesRequest), pb(pipeline_service.ListTrainingPipelinesResponse),
            lambda ctx, request: page(vertex_training.list_pipelines(ctx, request.parent, request.filter), request,
                                      pb(pipeline_service.ListTrainingPipelinesResponse), "training_pipelines")),
        "CancelTrainingPipeline": Rpc(pb(pipeline_service.CancelTrainingPipelineRequest), empty_pb2.Empty,
                                      _empty(vertex_training.cancel_pipeline)),
        "DeleteTrainingPipeline": Rpc(
            pb(pipeline_service.DeleteTrainingPipelineRequest), Operation,
            lambda ctx, request: to_message(vertex_training.delete_pipeline(ctx, request.name), Operation)),
    }


SERVICES = {"google.cloud.aiplatform.v1.JobService": _jobs(),
            "google.cloud.aiplatform.v1.PipelineService": _pipelines()}
