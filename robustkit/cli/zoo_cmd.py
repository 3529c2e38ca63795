"""``robustkit zoo list``: placeholder until the zoo module lands."""
import click


@click.group()
def zoo() -> None:
    """The model zoo."""
