#!/bin/sh
# Runs once, when the PostgreSQL volume is first initialised: a database and role for Optuna
# study storage (sweeps: BRATSLAB_OPTUNA_STORAGE=postgresql+psycopg://optuna:...@host:5432/optuna).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<-EOSQL
	CREATE ROLE optuna LOGIN PASSWORD '${OPTUNA_DB_PASSWORD}';
	CREATE DATABASE optuna OWNER optuna;
EOSQL
