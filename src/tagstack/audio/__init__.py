"""Audio in: the one decoder (:mod:`.io`) and the paper's log-mel front end (:mod:`.frontend`)."""
