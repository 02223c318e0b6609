"""Everything that acts on a network as a whole: the one model factory with foreign-checkpoint remaps
(:mod:`.models`), filter surgery (:mod:`.surgery`), evaluation (:mod:`.evaluate`) and BatchNorm recalibration
(:mod:`.recalibrate`). The layers made of keys are the public :mod:`masterkey.nn`."""
