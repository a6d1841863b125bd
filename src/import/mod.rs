//! Importers: other supervisors' files turned into what `baton init` writes.
//! Each plans from facts gathered up front (pure, unit-tested) and then
//! renders; none of them touches a running service.

pub(crate) mod pm2;
