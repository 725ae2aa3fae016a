"""Dead letters: changes and calls that could not be mapped or delivered.

``store`` keeps them in ``cdc_tracker.dead_letters`` in the source database;
``redrive`` maps them again with the current rulebook and delivers them;
``operations`` are what ``cdc-tracker deadletters list|show|retry|purge`` run.
"""
