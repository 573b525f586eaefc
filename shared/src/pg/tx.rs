//! Transactions on a [`Conn`] that can never be left open on a cached connection.

use super::{Conn, DbError};

/// A transaction on a [`Conn`]; [`Tx::commit`] or [`Tx::rollback`] end it. Dropped without
/// either, it discards its connection (the server rolls the transaction back), so a
/// transaction can never be left open on a cached connection.
pub struct Tx<'c> {
    conn: &'c Conn,
    done: bool,
}

impl Conn {
    pub async fn begin(&self) -> Result<Tx<'_>, DbError> {
        self.batch_execute("BEGIN").await?;
        Ok(Tx {
            conn: self,
            done: false,
        })
    }
}

impl Tx<'_> {
    pub async fn commit(mut self) -> Result<(), DbError> {
        self.done = true;
        self.conn.batch_execute("COMMIT").await
    }

    pub async fn rollback(mut self) {
        self.done = true;
        if self.conn.batch_execute("ROLLBACK").await.is_err() {
            self.conn.discard();
        }
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        self.conn
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.conn.discard();
        }
    }
}
