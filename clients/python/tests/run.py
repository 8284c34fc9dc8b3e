"""Runs test modules and prints one line per test for the Node test that drives them (test/share/python*.test.ts):
`@@dmaload-test {"id", "outcome": "pass" | "fail" | "skip", "detail"}`. Exits 0 when nothing failed.

    python3 clients/python/tests/run.py test_client [test_tensors ...]
"""
import json
import os
import sys
import unittest

MARK = "@@dmaload-test "


class Result(unittest.TestResult):
    def _emit(self, test, outcome, detail=""):
        sys.stdout.write(MARK + json.dumps({"id": test.id(), "outcome": outcome, "detail": detail}) + "\n")
        sys.stdout.flush()

    def addSuccess(self, test):
        super().addSuccess(test)
        self._emit(test, "pass")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._emit(test, "fail", self._exc_info_to_string(err, test))

    def addError(self, test, err):
        super().addError(test, err)
        self._emit(test, "fail", self._exc_info_to_string(err, test))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._emit(test, "skip", reason)

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._emit(subtest, "fail", self._exc_info_to_string(err, subtest))

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._emit(test, "fail", "unexpected success")


def main(names):
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    suite = unittest.defaultTestLoader.loadTestsFromNames(names)
    result = Result()
    suite.run(result)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
