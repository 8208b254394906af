"""The rules of each resource: models and versions, operations, jobs and their inputs, names, field checks,
Google's JSON rules. Resources record work in the store; the workers do it."""
