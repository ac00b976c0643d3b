"""Scripts that download the real datasets and weights and convert them to the project's layout.

Each dataset script is run as ``python -m data_scripts.<name> --out DIR`` from any folder once
the project is installed (``pip install -e .`` installs ``data_scripts`` with ``deepsim_edu``);
see ``data_scripts/README.md`` for the sources, licences and exact commands.
``_download.py`` holds the one implementation of downloading and safe extraction they all use.
"""
