"""Slimline's six DVC stages (the library is slimline/). Importing the package pins CPU
numerics for the mode params.yaml asks for (train.numerics), before anything imports torch."""
from slimline.numerics import pin_for_this_process as _pin

_pin()
