"""The explain stage: scale-space models of keys (:mod:`.scalespace`), eigen-patches of natural images
(:mod:`.eigenpatches`), and the explain run that puts them side by side (:mod:`.run`)."""
