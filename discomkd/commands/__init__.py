"""The command lines: each module a parser and main(argv) -> exit status, installed as discomkd-* commands."""
