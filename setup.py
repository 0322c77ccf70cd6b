"""Build script: the package plus its one native extension, the ROSA suffix-automaton kernel.

OpenMP is on by default (compile and link flags). Set ``ROSA_NO_OPENMP=1`` to build a
single-threaded kernel, e.g. with a compiler that lacks OpenMP support.
"""
import os
import sys

from setuptools import Extension, find_packages, setup

try:
    from Cython.Build import cythonize
except ImportError as exc:  # pragma: no cover - build requirement declared in pyproject.toml
    raise SystemExit("Cython>=3 is required to build rosa_lightning (pip install cython)") from exc

use_openmp = os.environ.get("ROSA_NO_OPENMP", "0") not in ("1", "true", "yes")
compile_args = ["-O3", "-std=c11"] if sys.platform != "win32" else ["/O2"]
link_args = []
if use_openmp:
    if sys.platform == "win32":
        compile_args.append("/openmp")
    else:
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")

# What only the studies and benchmarks under experiments/ need: their plots and the numba baseline of
# experiments/retrieval_throughput. The library imports neither (matplotlib only inside the NIAH plot of
# `python -m rosa_lightning.evaluation.compare`). The test extra includes them: the suite runs the studies'
# smoke versions.
STUDIES = ["matplotlib", "numba>=0.60"]

extensions = [
    Extension(
        "rosa_lightning.retrieval._sam",
        sources=["cython_ext/rosa_sam.pyx"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    ),
    Extension(
        "rosa_lightning.retrieval._tokens",
        sources=["cython_ext/rosa_tokens.pyx"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    ),
]

setup(
    name="rosa_lightning",
    version="0.1.0",
    description="ROSA-Tuning for Qwen3: windowed attention plus exact CPU suffix-automaton retrieval",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["rosa_lightning", "rosa_lightning.*"]),
    package_data={"rosa_lightning.evaluation": ["longbench_config/*", "data/ruler/*", "data/wonderwords/*",
                                               "fixtures/longbench/*.jsonl"]},
    python_requires=">=3.10",
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "transformers>=5.20,<6",
        "lightning>=2.4",
        "hydra-core>=1.3",
        "omegaconf>=2.3",
        "wandb>=0.31,<0.32",          # the offline logging and `wandb sync` usage in README.md are tested with 0.31
        "rich>=13",                   # the 80-column progress bar (rosa_lightning.callbacks.progress)
        "datasets>=3.0",
        "tokenizers>=0.20",
        "tqdm",
        # LongBench scoring: the versions its official per-sample scores are verified with.
        "rouge==1.0.1",
        "fuzzywuzzy==0.18.0",
        "jieba==0.42.1",
    ],
    extras_require={
        # lm-evaluation-harness for the short-context tasks (README "Short-context tasks"); not used by the tests
        "harness": ["lm-eval[hf]>=0.4.13,<0.5"],
        "studies": STUDIES,
        "test": ["pytest>=8", "pytest-timeout", "hypothesis>=6", "python-Levenshtein>=0.27", *STUDIES],
    },
    zip_safe=False,
)
