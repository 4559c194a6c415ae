"""Fixtures shared by the tests of the sweep scripts (``experiments.charlm``, ``experiments.bert``).

A test module names its script and reduced spec at module level::

    SCRIPT = charlm        # the module whose ``main(argv) -> exit code`` is run
    SPEC = "[t.train] ..." # a spec file with a profile ``t``
"""

import contextlib
import io

import pytest


@pytest.fixture(scope="module")
def run_script(request):
    """``run_script(argv) -> (exit code, stdout)``: the test module's ``SCRIPT.main(argv)``, its output captured."""
    main = request.module.SCRIPT.main

    def run(argv):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = main(argv)
        return code, printed.getvalue()

    return run


@pytest.fixture(scope="module")
def sweep(request, tmp_path_factory, run_script):
    """The test module's SPEC written to ``root/spec.toml`` and its profile ``t`` swept by ``SCRIPT`` into
    ``root/out`` and ``root/runs``, once per module: ``(root, argv, exit code, stdout)``."""
    root = tmp_path_factory.mktemp(request.module.SCRIPT.__name__.rsplit(".", 1)[-1])
    spec = root / "spec.toml"
    spec.write_text(request.module.SPEC)
    argv = ["--spec", str(spec), "--profile", "t", "--out", str(root / "out"), "--runs", str(root / "runs")]
    code, printed = run_script(argv)
    return root, argv, code, printed
