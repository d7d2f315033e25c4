"""MultiTaskUNetLib.protocol: the worker's line protocol."""

import pytest

from MultiTaskUNetLib.protocol import Error, Log, Progress, Result, Stream, is_cuda_out_of_memory, parse_line


@pytest.mark.parametrize("line, expected", [
    ("PROGRESS 0 loading model\n", Progress(0, "loading model")),
    ("PROGRESS 42 sliding window 3/7", Progress(42, "sliding window 3/7")),
    ("PROGRESS 100", Progress(100, "")),
    ("PROGRESS 12.6 inference\r\n", Progress(13, "inference")),
    ("PROGRESS 150 overshoot", Progress(100, "overshoot")),
    ("PROGRESS -3 undershoot", Progress(0, "undershoot")),
    ("RESULT /tmp/out/study_result.json\n", Result("/tmp/out/study_result.json")),
    ("RESULT C:\\out dir\\a_result.json", Result("C:\\out dir\\a_result.json")),
])
def test_protocol_lines_on_stdout(line, expected):
    assert parse_line(line, Stream.STDOUT) == expected


@pytest.mark.parametrize("line", ["PROGRESS abc stage", "PROGRESSING 10 x", "progress 10 x", "RESULT", "hello"])
def test_malformed_or_other_stdout_is_log(line):
    assert parse_line(line) == Log(line, Stream.STDOUT)


def test_error_only_on_stderr():
    assert parse_line("ERROR scan.nii.gz: not a volume\n", Stream.STDERR) == Error("scan.nii.gz: not a volume")
    # an ERROR word on stdout is a log line, a PROGRESS on stderr too: each keyword has its pipe
    assert parse_line("ERROR x", Stream.STDOUT) == Log("ERROR x", Stream.STDOUT)
    assert parse_line("PROGRESS 5 x", Stream.STDERR) == Log("PROGRESS 5 x", Stream.STDERR)


@pytest.mark.parametrize("message, oom", [
    ("CUDA out of memory. Tried to allocate 2.00 GiB", True),
    ("torch.OutOfMemoryError: CUDA out of memory.", True),
    ("RuntimeError: CUDA error: out of memory", True),
    ("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate", True),
    ("scan.nii.gz: cannot read the image", False),
    ("MemoryError", False),  # host memory: the CPU would not do better
])
def test_cuda_out_of_memory_detection(message, oom):
    assert is_cuda_out_of_memory(message) is oom
