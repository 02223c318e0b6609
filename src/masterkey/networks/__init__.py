"""Everything that acts on a network: the one model factory with foreign-checkpoint remaps (:mod:`.models`),
filter surgery (:mod:`.surgery`), frozen-key convolutions (:mod:`.keyconv`), evaluation (:mod:`.evaluate`) and
BatchNorm recalibration (:mod:`.recalibrate`)."""
