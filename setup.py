from setuptools import find_packages, setup

version = {}
with open("outbox_relay/__init__.py", encoding="utf-8") as f:
    for line in f:
        if line.startswith("__version__"):
            exec(line, version)

setup(
    name="outbox-relay",
    version=version["__version__"],
    description="Every Feishu message into PostgreSQL or MySQL: a local SQLite outbox relayed in batches",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["outbox_relay", "outbox_relay.*"]),
    # The OpenClaw hook (integrations/openclaw/outbox-relay, linked as intake/openclaw-hook) for
    # `outbox-relay openclaw install-hook`: copied into the wheel, the link followed.
    package_data={"outbox_relay.intake": ["openclaw-hook/*"]},
    python_requires=">=3.10",
    install_requires=[
        "peewee>=3.17,<5",
        "psycopg2-binary>=2.9,<3",
        "backoff>=2.2,<3",
        "click>=8.1,<9",
        # HTTP side (issue: webhook): framework, server, metrics, Feishu crypto.
        "falcon>=3.1,<5",
        "waitress>=2.1,<4",
        "prometheus-client>=0.17,<1",
        "cryptography>=41",
        # backfill feishu: pooled connections, connect/read timeouts (README: Dependencies).
        "urllib3>=2,<3",
        # Progress bars and the live `top` view: no hand-written terminal escape codes.
        "rich>=13",
        # JSON encoding 5-6x faster than the standard library's, on the put path and the relay's.
        "orjson>=3.9",
        # backfill openclaw: OpenClaw stores transcript events as zstd frames (event_zstd) and may
        # compress archived transcripts (*.zst); Python's standard library has no zstd before 3.14.
        "zstandard>=0.22",
        'tomli>=2; python_version < "3.11"',
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "pytest-timeout>=2"],
        "bench": ["persist-queue>=1.0,<2", "matplotlib>=3.5"],
        "lint": ["ruff>=0.4"],
        # MySQL / MariaDB targets (mysql://, mariadb://): pure Python, no compiler. 1.2 refuses a
        # server without TLS when TLS is required and gives every error its SQLSTATE.
        "mysql": ["PyMySQL>=1.2,<2"],
    },
    entry_points={"console_scripts": ["outbox-relay=outbox_relay.cli:main"]},
    classifiers=["Programming Language :: Python :: 3", "License :: OSI Approved :: MIT License"],
)
