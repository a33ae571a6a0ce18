"""One module per `python -m workbench` verb: argument wiring and console output only.

May import anything; nothing imports it but `workbench.__main__`.
"""
