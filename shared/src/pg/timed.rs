//! Calls on a [`Conn`]: the plain methods with the query timeout, and [`Timed`] for calls with
//! another deadline (long statements, lock waits, a limit of the caller's).

use std::{future::Future, time::Duration};

use tokio_postgres::{types::ToSql, Row, SimpleQueryMessage, ToStatement};

use super::{conn::InFlight, Conn, DbError};

/// Calls on a [`Conn`] with one deadline: [`Conn::long`] and [`Conn::within`] give other
/// deadlines than the query timeout of the plain methods.
pub struct Timed<'c> {
    conn: &'c Conn,
    limit: Duration,
}

impl Conn {
    /// Calls with the query timeout (the default of the plain methods).
    fn timed(&self) -> Timed<'_> {
        self.within(self.query_timeout)
    }

    /// Calls that may run as long as the server lets a statement run (DDL, migrations).
    pub fn long(&self) -> Timed<'_> {
        self.within(self.long_timeout)
    }

    /// Calls that may wait for a row or table lock: the server's lock timeout ends the wait
    /// first (SQLSTATE 55P03), then the answer has a query timeout to arrive.
    pub fn locking(&self) -> Timed<'_> {
        self.within(self.lock_wait())
    }

    /// The deadline of [`Conn::locking`].
    pub fn lock_wait(&self) -> Duration {
        self.lock_timeout + self.query_timeout
    }

    /// Calls with a deadline of their own.
    pub fn within(&self, limit: Duration) -> Timed<'_> {
        Timed { conn: self, limit }
    }

    pub async fn query<T>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, DbError>
    where
        T: ?Sized + ToStatement,
    {
        self.timed().query(sql, params).await
    }

    pub async fn query_one<T>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, DbError>
    where
        T: ?Sized + ToStatement,
    {
        self.timed().query_one(sql, params).await
    }

    pub async fn query_opt<T>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, DbError>
    where
        T: ?Sized + ToStatement,
    {
        self.timed().query_opt(sql, params).await
    }

    pub async fn execute<T>(&self, sql: &T, params: &[&(dyn ToSql + Sync)]) -> Result<u64, DbError>
    where
        T: ?Sized + ToStatement,
    {
        self.timed().execute(sql, params).await
    }

    pub async fn batch_execute(&self, sql: &str) -> Result<(), DbError> {
        self.timed().batch_execute(sql).await
    }

    pub async fn simple_query(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>, DbError> {
        self.timed().simple_query(sql).await
    }
}

impl Timed<'_> {
    async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, DbError> {
        let conn = self.conn;
        if !conn.is_usable() {
            return Err(DbError::Unavailable(
                "connection discarded or closed".into(),
            ));
        }
        let limit = self.limit;
        let mut call = InFlight::start(conn);
        let outcome = tokio::time::timeout(limit, fut).await;
        call.finished = true;
        drop(call);
        let Ok(outcome) = outcome else {
            // The statement may still run: cancelled (on a connection that cancels), then the
            // connection discarded.
            conn.abandon();
            conn.discard();
            return Err(DbError::Unavailable(format!(
                "no answer within {} ms; connection discarded",
                limit.as_millis()
            )));
        };
        outcome.map_err(|e| {
            let e = DbError::from(e);
            if e.is_unavailable() {
                conn.discard();
            }
            e
        })
    }

    pub async fn query<T>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, DbError>
    where
        T: ?Sized + ToStatement,
    {
        self.call(self.conn.client.query(sql, params)).await
    }

    pub async fn query_one<T>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, DbError>
    where
        T: ?Sized + ToStatement,
    {
        self.call(self.conn.client.query_one(sql, params)).await
    }

    pub async fn query_opt<T>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, DbError>
    where
        T: ?Sized + ToStatement,
    {
        self.call(self.conn.client.query_opt(sql, params)).await
    }

    pub async fn execute<T>(&self, sql: &T, params: &[&(dyn ToSql + Sync)]) -> Result<u64, DbError>
    where
        T: ?Sized + ToStatement,
    {
        self.call(self.conn.client.execute(sql, params)).await
    }

    pub async fn batch_execute(&self, sql: &str) -> Result<(), DbError> {
        self.call(self.conn.client.batch_execute(sql)).await
    }

    pub async fn simple_query(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>, DbError> {
        self.call(self.conn.client.simple_query(sql)).await
    }
}
