"""asv benchmarks of every workload x style x placement of the registries.

* ``Training``: time of one optimizer step and of one epoch in steady state
  (model rebuilt and warmed up in ``setup``; the device is synchronised inside the
  timed call), and the peak memory (RSS) of a short training run.
* ``TrainingGPUMemory``: peak GPU memory of the same run where a CUDA placement runs.
* ``TrainingQuality`` and ``TimeToTarget``: one run per configuration of the
  documented schedule (capped at ``benchmarking.QUALITY_STEPS`` steps, from the
  workload's typical seed), made once in ``setup_cache``: final test loss, error
  (1 - accuracy, or the test MSE), steps to the quality target and the time the
  training steps took to get there.

asv treats lower as better: every tracked quantity here is lower-is-better.
Versions are explicit so that refactoring the code does not orphan the history:
bump one only when the meaning of its numbers changes.
"""

import math


from .common import GRID, GRID_NAMES, Benchmark, benchmarking, engine_module, skip_unavailable


class Training(Benchmark):
    """One step, one epoch, and the peak memory of a run, for one configuration."""

    version = "1"
    params = GRID
    param_names = GRID_NAMES

    def setup(self, workload, style, placement):
        self.prepared = skip_unavailable(benchmarking.prepare, workload, style, placement)

    def teardown(self, workload, style, placement):
        # A model that diverged during the timed calls has no time to report: fail it.
        if hasattr(self, "prepared"):
            self.prepared.check()

    def time_step(self, workload, style, placement):
        self.prepared.step()

    def time_epoch(self, workload, style, placement):
        self.prepared.epoch()

    # An epoch is up to 1000 steps (seconds with the DataLoader): fewer samples.
    time_epoch.repeat = (3, 10, 10.0)

    def peakmem_train(self, workload, style, placement):
        benchmarking.training_run(workload, style, placement, benchmarking.PEAKMEM_STEPS)


class TrainingGPUMemory(Benchmark):
    """Peak GPU memory (bytes allocated, all devices) of a short run, where CUDA runs."""

    version = "1"
    params = GRID
    param_names = GRID_NAMES

    def setup(self, workload, style, placement):
        # Checks only: placement availability, and that it runs on CUDA at all.
        skip_unavailable(benchmarking.gpu_config, workload, style, placement)

    def track_peak_gpu_memory(self, workload, style, placement):
        return benchmarking.peak_gpu_memory(workload, style, placement)

    track_peak_gpu_memory.unit = "bytes"


class _QualityRuns(Benchmark):
    """One capped documented run per available configuration, shared by the classes below.

    asv keys ``setup_cache`` by where it is defined, so the runs are made once for
    both subclasses.
    """

    def setup_cache(self):
        return benchmarking.quality_records()

    setup_cache.timeout = 3600.0

    def setup(self, records, workload, style, placement):
        record = records[(workload, style, placement)]
        if isinstance(record, str):
            raise NotImplementedError(record)
        self.record = record


class TrainingQuality(_QualityRuns):
    """Quality at the end of the (capped) documented schedule."""

    version = "1"
    params = GRID
    param_names = GRID_NAMES

    def track_test_loss(self, records, workload, style, placement):
        return self.record["test_loss"]

    track_test_loss.unit = "loss"

    def track_test_error(self, records, workload, style, placement):
        return benchmarking.error_value(self.record)

    track_test_error.unit = "1-accuracy or MSE"


class TimeToTarget(_QualityRuns):
    """Steps, and seconds of training steps, to the workload's quality target in that run.

    The seconds are the runner's own time to target, the number the CLI reports: steps to
    target x the steady-state step time (docs/measurement.md).  Not reaching the target within the cap is a failure (asv marks
    a benchmark that starts failing as a regression), not a skip.
    """

    version = "1"
    params = GRID
    param_names = GRID_NAMES

    def setup(self, records, workload, style, placement):
        _QualityRuns.setup(self, records, workload, style, placement)
        if not math.isfinite(self.record["target"]):
            raise NotImplementedError(f"{workload} has no quality target registered yet")

    def _reached(self):
        record = self.record
        if not record["reached_target"]:
            raise RuntimeError(
                f"{record['workload']}: {record['metric']} target {record['target']:g} not reached within "
                f"{record['steps']} steps (last {record['metric_value']:.4g})"
            )
        return record

    def track_steps_to_target(self, records, workload, style, placement):
        return self._reached()["steps_to_target"]

    track_steps_to_target.unit = "steps"

    def track_time_to_target(self, records, workload, style, placement):
        return self._reached()["time_to_target_s"]

    track_time_to_target.unit = "seconds"
    # 2: steps to target x the step time (1 was the sum of the timed steps; a new series, not a step in it)
    track_time_to_target.version = "2"


class InstructionCounts(Benchmark):
    """Instructions per optimizer step under valgrind's callgrind (``torchloops count``): a
    deterministic history line where seconds are noise.

    One valgrind process counts every workload x style on cpu once, in ``setup_cache``
    (4-7 minutes on the 2-core machine; the start-up under valgrind is paid once, not per
    parameter combination); each parameter combination reads its number.  Where valgrind is
    missing or torch has no valgrind hooks, every combination is skipped with the reason;
    placements other than cpu are skipped (callgrind counts host instructions).
    """

    version = "1"
    params = GRID
    param_names = GRID_NAMES
    timeout = 1800.0

    def setup_cache(self):
        counting = engine_module("counting")

        problem = counting.valgrind_problem()
        if problem is not None:
            return {"unavailable": problem}
        return {key: record["instructions_per_step"] for key, record in counting.grid_counts().items()}

    setup_cache.timeout = 1800.0

    def setup(self, counts, workload, style, placement):
        if "unavailable" in counts:
            raise NotImplementedError(counts["unavailable"])
        if placement != "cpu":
            raise NotImplementedError("instruction counts are measured on the cpu placement only")
        if (workload, style) not in counts:
            raise NotImplementedError(f"{workload}/{style} was not counted")

    def track_instructions_per_step(self, counts, workload, style, placement):
        return counts[(workload, style)]

    track_instructions_per_step.unit = "instructions"
