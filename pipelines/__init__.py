"""Jobs of car-relapse: simulate, validate, features, evaluate, train, score, serve; the CLI lives here."""
