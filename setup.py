"""Packaging for trow: the package itself plus the twistd plugin dropin."""

from setuptools import find_packages, setup

setup(
    name="trow",
    version="0.1.0",
    description="In-cluster OCI registry, pull-through cache and admission webhook on Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    # twisted.plugins is a namespace-style dropin directory: it must be listed explicitly and must
    # never get an __init__.py, or twistd loses the plugin.
    packages=find_packages(exclude=["tests*", "bench*", "twisted*"]) + ["twisted.plugins"],
    package_data={"trow": ["py.typed"]},
    install_requires=[
        "twisted[tls]>=24.7",
        "klein>=23.12",
        "treq>=24.9",
        "attrs>=23.1",
        "pyopenssl>=24",
        "service-identity>=24",
        "pyyaml>=6",
        "cryptography>=42",
        # The public suffix list, bundled: whether a token realm is in an upstream's own domain.
        "publicsuffixlist>=1.0",
        # htpasswd entries (bcrypt), signed registry tokens (JWT, HS256), /metrics.
        "bcrypt>=4.1",
        "pyjwt>=2.8",
        "prometheus-client>=0.20",
        # --database: PostgreSQL for metadata and coordination of several replicas. The binary
        # extra bundles libpq; the pool reconnects and bounds the wait for a connection.
        "psycopg[binary]>=3.1",
        "psycopg-pool>=3.2",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "mypy>=1.10",
            "mypy-zope>=1.0",
            "types-PyYAML",
            # Offline validation of deploy/ against the Kubernetes schemas.
            "kubernetes-validate>=1.30",
        ],
    },
    entry_points={"console_scripts": []},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
    ],
)
